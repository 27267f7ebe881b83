package tester

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func BenchmarkAppendBody(b *testing.B) {
	ids := make([]int64, 200)
	for i := range ids {
		ids[i] = int64(i) * 7919
	}
	buf := make([]byte, 0, 4096)
	b.ReportAllocs()
	for b.Loop() {
		buf = appendBody(buf[:0], ids)
	}
}

// BenchmarkSender measures the load generator alone against a loopback server that
// accepts everything: the ceiling the sender puts on any measurement.
func BenchmarkSender(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusAccepted)
	}))
	defer srv.Close()
	cfg := DefaultSenderConfig()
	cfg.Target, cfg.Interval, cfg.Senders, cfg.IDsMin, cfg.IDsMax = srv.URL, 0, 16, 200, 200
	cfg.Track = false
	cfg.Count = int64(b.N)
	s, err := NewSender(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	if err := s.Run(b.Context()); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	st := s.Stats()
	if st.Accepted != int64(b.N) {
		b.Fatalf("accepted %d of %d: %+v", st.Accepted, b.N, st)
	}
	b.ReportMetric(float64(st.Accepted)/b.Elapsed().Seconds(), "callbacks/s")
	b.ReportMetric(float64(st.Latency.P99.Microseconds()), "p99-µs")
}
