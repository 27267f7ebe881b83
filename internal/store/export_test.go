package store

// ExpiryLockKey lets tests hold the expiry lock as another replica would.
var ExpiryLockKey = expiryLockKey
