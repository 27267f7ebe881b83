package devpg

import "testing"

func TestShellQuote(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		"/tmp/x":      "/tmp/x",
		"::1":         "::1",
		"a b":         "'a b'",
		"it's":        `'it'\''s'`,
		"":            "''",
		"$(rm -rf /)": "'$(rm -rf /)'",
	}
	for in, want := range tests {
		if got := ShellQuote(in); got != want {
			t.Errorf("ShellQuote(%q) = %q, want %q", in, got, want)
		}
	}
}
