// Command loadgen drives Tierline's command endpoint over HTTP with N concurrent clients and
// prints one JSON line of figures. It is the bench's load client when the CPU a Python client
// would take from the 2-core machine must stay with the server (bench/write_path.py --client go).
//
// Each client opens nothing itself: the issues are opened first (one per client, or -hot N
// shared ones), then every client posts comments to its issue until the time is up, timing
// each request from send to the last byte of the answer.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

type result struct {
	Clients       int     `json:"clients"`
	Issues        int     `json:"issues"`
	Commands      int     `json:"commands"`
	Errors        int     `json:"errors"`
	CommandsPerS  float64 `json:"commands_per_s"`
	P50Ms         float64 `json:"p50_ms"`
	P99Ms         float64 `json:"p99_ms"`
	MeanMs        float64 `json:"mean_ms"`
	MaxMs         float64 `json:"max_ms"`
	ElapsedS      float64 `json:"elapsed_s"`
	FirstErrorMsg string  `json:"first_error,omitempty"`
}

func main() {
	base := flag.String("url", "http://127.0.0.1:8080", "API base URL")
	key := flag.String("key", "", "bearer API key")
	vendor := flag.String("vendor", "bench", "vendor to open issues against")
	clients := flag.Int("clients", 32, "concurrent clients")
	hot := flag.Int("hot", 0, "issues shared by all clients (0: one issue per client)")
	seconds := flag.Float64("seconds", 10, "measured seconds")
	flag.Parse()

	transport := &http.Transport{MaxIdleConns: *clients * 2, MaxIdleConnsPerHost: *clients * 2,
		MaxConnsPerHost: *clients, DisableCompression: true}
	client := &http.Client{Transport: transport, Timeout: 60 * time.Second}
	post := func(path string, body string) (int, []byte, error) {
		req, err := http.NewRequest("POST", *base+path, strings.NewReader(body))
		if err != nil {
			return 0, nil, err
		}
		req.Header.Set("Authorization", "Bearer "+*key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(resp.Body)
		return resp.StatusCode, data, err
	}

	n := *clients
	if *hot > 0 {
		n = *hot
	}
	ids := make([]string, n)
	for i := range ids {
		body := fmt.Sprintf(`{"vendor_id":%q,"title":"bench %d","category":"quality","priority":"P3"}`, *vendor, i)
		status, data, err := post("/v1/issues", body)
		if err != nil || status != 201 {
			fmt.Fprintf(os.Stderr, "open issue: status %d err %v body %s\n", status, err, data)
			os.Exit(1)
		}
		var opened struct {
			ID string `json:"id"`
		}
		if err := json.NewDecoder(bytes.NewReader(data)).Decode(&opened); err != nil {
			fmt.Fprintln(os.Stderr, "open issue:", err)
			os.Exit(1)
		}
		ids[i] = opened.ID
	}

	comment := `{"body":"bench comment ` + strings.Repeat("x", 200) + `"}`
	var mu sync.Mutex
	var latencies []float64
	errors := 0
	firstError := ""
	stopAt := time.Now().Add(time.Duration(*seconds * float64(time.Second)))
	started := time.Now()
	var wg sync.WaitGroup
	for c := 0; c < *clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			path := "/v1/issues/" + ids[c%len(ids)] + "/comments"
			mine := make([]float64, 0, 4096)
			bad := 0
			msg := ""
			for time.Now().Before(stopAt) {
				t0 := time.Now()
				status, data, err := post(path, comment)
				mine = append(mine, float64(time.Since(t0).Microseconds())/1000)
				if err != nil || status != 200 {
					bad++
					if msg == "" {
						msg = fmt.Sprintf("status %d err %v body %.200s", status, err, data)
					}
				}
			}
			mu.Lock()
			latencies = append(latencies, mine...)
			errors += bad
			if firstError == "" {
				firstError = msg
			}
			mu.Unlock()
		}(c)
	}
	wg.Wait()
	elapsed := time.Since(started).Seconds()
	sort.Float64s(latencies)
	rank := func(q float64) float64 { // nearest rank, as bench/common.py percentile
		if len(latencies) == 0 {
			return 0
		}
		i := int(math.RoundToEven(q*float64(len(latencies)))) - 1
		i = max(0, min(len(latencies)-1, i))
		return latencies[i]
	}
	sum := 0.0
	for _, l := range latencies {
		sum += l
	}
	out := result{Clients: *clients, Issues: n, Commands: len(latencies), Errors: errors,
		CommandsPerS: float64(len(latencies)) / elapsed, P50Ms: rank(0.50), P99Ms: rank(0.99),
		ElapsedS: elapsed, FirstErrorMsg: firstError}
	if len(latencies) > 0 {
		out.MeanMs = sum / float64(len(latencies))
		out.MaxMs = latencies[len(latencies)-1]
	}
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(out); err != nil {
		os.Exit(1)
	}
}
