package db_test

import (
	"io/fs"
	"os"
	"strings"
	"testing"

	"github.com/objwatch/callback/db"
)

// db/schema.sql is what `make db/up` dumps after applying every migration: a reader's
// view of the schema, not an input to anything. It must not fall behind the migrations.
func TestSchemaDump_hasEveryMigration(t *testing.T) {
	t.Parallel()
	dump, err := os.ReadFile("schema.sql")
	if err != nil {
		t.Fatal(err)
	}
	files, err := fs.Glob(db.Migrations, db.MigrationsDir+"/*.sql")
	if err != nil || len(files) == 0 {
		t.Fatalf("no migrations embedded: %v", err)
	}
	for _, f := range files {
		version, _, _ := strings.Cut(strings.TrimPrefix(f, db.MigrationsDir+"/"), "_")
		if !strings.Contains(string(dump), "('"+version+"')") {
			t.Errorf("db/schema.sql lacks migration %s: run make db/up against a scratch database (DATABASE_URL) to dump it again", f)
		}
	}
}
