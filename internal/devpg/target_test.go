package devpg

import (
	"slices"
	"strings"
	"testing"
)

func TestParseTarget(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		url      string
		wantHost string
		wantPort uint16
		wantUser string
		wantErr  bool
	}{
		{name: "default_url", url: "postgres://postgres@127.0.0.1:5432/callback?sslmode=disable", wantHost: "127.0.0.1", wantPort: 5432, wantUser: "postgres"},
		{name: "other_port_and_user", url: "postgres://alice:secret@localhost:55432/app?sslmode=disable", wantHost: "localhost", wantPort: 55432, wantUser: "alice"},
		{name: "postgresql_scheme_without_port", url: "postgresql://bob@127.0.0.1/app", wantHost: "127.0.0.1", wantPort: 5432, wantUser: "bob"},
		{name: "ipv6_host", url: "postgres://postgres@[::1]:6000/app", wantHost: "::1", wantPort: 6000, wantUser: "postgres"},
		{name: "key_value_string", url: "host=127.0.0.1 port=6543 user=carol dbname=app", wantHost: "127.0.0.1", wantPort: 6543, wantUser: "carol"},
		{name: "socket_directory", url: "host=/var/run/postgresql port=5432 user=postgres", wantHost: "/var/run/postgresql", wantPort: 5432, wantUser: "postgres"},
		{name: "rejects_bad_port", url: "postgres://postgres@127.0.0.1:notaport/app", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseTarget(tc.url)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("ParseTarget(%q) = %+v, want an error", tc.url, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseTarget(%q): %v", tc.url, err)
			}
			if got.Host != tc.wantHost || got.Port != tc.wantPort || got.User != tc.wantUser {
				t.Errorf("ParseTarget(%q) = %s:%d user %s, want %s:%d user %s",
					tc.url, got.Host, got.Port, got.User, tc.wantHost, tc.wantPort, tc.wantUser)
			}
			if got.admin.Database != "postgres" {
				t.Errorf("admin database = %q, want postgres (the app database may not exist yet)", got.admin.Database)
			}
		})
	}
}

func TestParseTarget_keeps_password_out_of_errors(t *testing.T) {
	t.Parallel()
	_, err := ParseTarget("postgres://u:hunter2@127.0.0.1:notaport/app")
	if err == nil {
		t.Fatal("want an error")
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error leaks the password: %v", err)
	}
}

func TestParseTarget_multi_host(t *testing.T) {
	t.Parallel()
	got, err := ParseTarget("postgres://postgres@127.0.0.1:55460,127.0.0.1:55461/app?target_session_attrs=read-write")
	if err != nil {
		t.Fatal(err)
	}
	if got.Addr() != "127.0.0.1:55460" || !slices.Equal(got.Others, []string{"127.0.0.1:55461"}) {
		t.Errorf("ParseTarget = %s and %q, want 127.0.0.1:55460 and [127.0.0.1:55461]", got.Addr(), got.Others)
	}
}
