package faulttest

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/objwatch/callback/internal/testhelper"
)

// TestBadInput throws malformed and abusive requests at the running service (with
// CALLBACK_TOKEN set): each gets its 4xx quickly, slow clients are cut off, nothing
// reaches the inbox, pending work or objects, and the service is still up.
func TestBadInput(t *testing.T) {
	t.Parallel()
	tb := setup(t, setupOpts{objects: fastObjects(10)})
	const token = "s3cret-token"
	e := tb.env.with("CALLBACK_TOKEN", token, "BODY_TIMEOUT", "1s")
	s := startInproc(t, e)
	addr := e["LISTEN_ADDR"]
	auth := "Bearer " + token

	// Answered within this; the bar is a second, the rest is room for a
	// loaded CI machine. BODY_TIMEOUT cases get the timeout on top.
	const quick = 2 * time.Second

	cases := []struct {
		name, method, auth, body string
		want                     int
	}{
		{"no_token", http.MethodPost, "", `{"object_ids":[1]}`, http.StatusUnauthorized},
		{"wrong_token", http.MethodPost, "Bearer wrong", `{"object_ids":[1]}`, http.StatusUnauthorized},
		{"token_without_bearer", http.MethodPost, token, `{"object_ids":[1]}`, http.StatusUnauthorized},
		{"huge_number", http.MethodPost, auth, `{"object_ids":[123456789012345678901234567890]}`, http.StatusBadRequest},
		{"just_over_int64", http.MethodPost, auth, `{"object_ids":[9223372036854775808]}`, http.StatusBadRequest},
		{"negative_id", http.MethodPost, auth, `{"object_ids":[-1]}`, http.StatusBadRequest},
		{"fractional_id", http.MethodPost, auth, `{"object_ids":[1.5]}`, http.StatusBadRequest},
		{"string_id", http.MethodPost, auth, `{"object_ids":["1"]}`, http.StatusBadRequest},
		{"null_ids", http.MethodPost, auth, `{"object_ids":null}`, http.StatusBadRequest},
		{"nested_ids", http.MethodPost, auth, `{"object_ids":[[1]]}`, http.StatusBadRequest},
		{"deeply_nested", http.MethodPost, auth,
			`{"object_ids":[1],"x":` + strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + `}`, http.StatusBadRequest},
		{"invalid_utf8", http.MethodPost, auth, "{\"object_ids\":[1],\"x\":\"\xff\xfe\"}", http.StatusBadRequest},
		{"not_json", http.MethodPost, auth, `object_ids=1,2`, http.StatusBadRequest},
		{"empty_body", http.MethodPost, auth, ``, http.StatusBadRequest},
		{"truncated", http.MethodPost, auth, `{"object_ids":[1,2`, http.StatusBadRequest},
		{"trailing_garbage", http.MethodPost, auth, `{"object_ids":[1]}x`, http.StatusBadRequest},
		{"too_many_ids", http.MethodPost, auth, `{"object_ids":[` + strings.Repeat("1,", 10000) + `1]}`, http.StatusRequestEntityTooLarge},
		{"get", http.MethodGet, auth, ``, http.StatusMethodNotAllowed},
		{"put", http.MethodPut, auth, `{"object_ids":[1]}`, http.StatusMethodNotAllowed},
		{"delete", http.MethodDelete, auth, ``, http.StatusMethodNotAllowed},
	}
	client := &http.Client{Timeout: 5 * time.Second}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, s.base+"/callback", strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			start := time.Now()
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("%v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			took := time.Since(start)
			if resp.StatusCode != tc.want {
				t.Errorf("status %d, want %d (body %.200s)", resp.StatusCode, tc.want, body)
			}
			if !bytes.Contains(body, []byte(`"error"`)) {
				t.Errorf("body %.200q has no error message", body)
			}
			if took > quick {
				t.Errorf("answered after %v", took)
			}
		})
	}

	t.Run("ten_megabyte_body", func(t *testing.T) {
		conn := dial(t, addr)
		start := time.Now()
		const size = 10 << 20
		writeString(conn, "POST /callback HTTP/1.1\r\nHost: x\r\nAuthorization: "+auth+
			"\r\nContent-Type: application/json\r\nContent-Length: 10485760\r\n\r\n")
		go func() { // keep writing, as an abusive client would; errors end it
			chunk := bytes.Repeat([]byte("1,"), 32<<10)
			for sent := 0; sent < size; sent += len(chunk) {
				if _, err := conn.Write(chunk); err != nil {
					return
				}
			}
		}()
		status := readStatus(t, conn, 5*time.Second)
		if status != http.StatusRequestEntityTooLarge {
			t.Errorf("status %d, want 413", status)
		}
		if took := time.Since(start); took > quick {
			t.Errorf("answered after %v", took)
		}
	})

	t.Run("body_that_never_finishes", func(t *testing.T) {
		conn := dial(t, addr)
		start := time.Now()
		writeString(conn, "POST /callback HTTP/1.1\r\nHost: x\r\nAuthorization: "+auth+
			"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"object_ids\":[1,")
		status := readStatus(t, conn, 5*time.Second)
		took := time.Since(start)
		if status != http.StatusRequestTimeout {
			t.Errorf("status %d, want 408", status)
		}
		if bodyTimeout := e.duration(t, "BODY_TIMEOUT"); took > bodyTimeout+quick {
			t.Errorf("answered after %v, BODY_TIMEOUT is %v", took, bodyTimeout)
		}
	})

	t.Run("headers_byte_by_byte", func(t *testing.T) {
		conn := dial(t, addr)
		start := time.Now()
		go func() {
			req := "POST /callback HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth + "\r\nContent-Length: 18\r\n\r\n{\"object_ids\":[1]}"
			for i := range len(req) {
				if _, err := conn.Write([]byte{req[i]}); err != nil {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(conn) // until the server closes the connection
		took := time.Since(start)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("the server still holds the connection after %v", took)
		}
		if bytes.HasPrefix(got, []byte("HTTP/1.1 2")) {
			t.Errorf("a slow client got %q", got)
		}
		if took > 4*time.Second {
			t.Errorf("the server closed the connection after %v; ReadHeaderTimeout should cut it within about a second", took)
		}
		t.Logf("connection closed after %v (answer %.40q)", took, got)
	})

	// Nothing of the above was stored, and the service is still up.
	testhelper.Eventually(t, 5*time.Second, "the service still answers /healthz", func() bool { return healthy(s.base) })
	var inbox, pending, objects int64
	if err := tb.pool.QueryRow(context.Background(),
		"SELECT (SELECT count(*) FROM inbox_batches), (SELECT count(*) FROM pending), (SELECT count(*) FROM objects)").
		Scan(&inbox, &pending, &objects); err != nil {
		t.Fatal(err)
	}
	if inbox+pending+objects != 0 {
		t.Errorf("bad input left rows: inbox %d, pending %d, objects %d", inbox, pending, objects)
	}
	if n := metric(t, s.base, "callback_callbacks_accepted_total"); n != 0 {
		t.Errorf("%v bad callbacks were accepted", n)
	}
	if n := len(spoolSegments(t, e["SPOOL_DIR"])); n != 0 {
		t.Errorf("bad input left %d spool segments", n)
	}

	// And the right token with a good body is accepted.
	req, _ := http.NewRequest(http.MethodPost, s.base+"/callback", strings.NewReader(`{"object_ids":[2]}`))
	req.Header.Set("Authorization", auth)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Errorf("a good callback with the right token got %d, want 202", resp.StatusCode)
	}
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func writeString(conn net.Conn, s string) { _, _ = conn.Write([]byte(s)) }

// readStatus reads one HTTP response from conn and returns its status (0 if none
// came within limit).
func readStatus(t *testing.T, conn net.Conn, limit time.Duration) int {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(limit))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Errorf("no response: %v", err)
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}
