// Package db embeds the dbmate migrations, so that the service can apply them at start
// and tests can build their template database from the very same files.
package db

import "embed"

// Migrations holds migrations/*.sql, in dbmate format: one up/down pair per file.
//
//go:embed migrations/*.sql
var Migrations embed.FS

// MigrationsDir is the directory inside Migrations.
const MigrationsDir = "migrations"
