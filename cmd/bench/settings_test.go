package main

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSettings(t *testing.T) {
	t.Parallel()
	const help = `Usage of callback:
  -callback-token string
    	if set, POST /callback requires Authorization: Bearer <token> (a string, env CALLBACK_TOKEN, default "")
  -fetch-concurrency int
    	ceiling of the adaptive limit (and of keep-alive connections) (an int, env FETCH_CONCURRENCY, default "10000")
  -listen-addr string
    	HTTP listen address (a string, env LISTEN_ADDR, default ":9090")
  -overload-pace duration
    	answered "this long" after (0: never) (a duration, env OVERLOAD_PACE, default "400ms")
`

	t.Run("reads_each_variable_and_its_default", func(t *testing.T) {
		t.Parallel()
		s, err := parseSettings(help)
		require.NoError(t, err)
		require.Equal(t, settings{"CALLBACK_TOKEN": "", "FETCH_CONCURRENCY": "10000", "LISTEN_ADDR": ":9090", "OVERLOAD_PACE": "400ms"}, s)
		require.Equal(t, 10000.0, s.fetchConcurrency())
		// LISTEN_ADDR is the bench's to set: not a default a phase runs with.
		require.Equal(t, "CALLBACK_TOKEN unset, FETCH_CONCURRENCY=10000, OVERLOAD_PACE=400ms", s.defaults())
	})

	t.Run("a_help_without_settings_is_an_error", func(t *testing.T) {
		t.Parallel()
		_, err := parseSettings("flag provided but not defined: -h")
		require.Error(t, err)
	})

	t.Run("the_child_inherits_no_setting_from_the_shell", func(t *testing.T) {
		t.Parallel()
		s := settings{"FETCH_CONCURRENCY": "10000", "CONSOLE": "on", "LISTEN_ADDR": ":9090"}
		env := s.childEnv([]string{"PATH=/bin", "FETCH_CONCURRENCY=512", "CONSOLE=off", "FETCH_CONCURRENCY_X=1"}, "LISTEN_ADDR=127.0.0.1:1")
		require.Equal(t, []string{"PATH=/bin", "FETCH_CONCURRENCY_X=1", "LISTEN_ADDR=127.0.0.1:1"}, env)
	})
}
