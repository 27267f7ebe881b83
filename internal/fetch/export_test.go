package fetch

// Eventually lets the external tests share the internal tests' wait.
var Eventually = eventually
