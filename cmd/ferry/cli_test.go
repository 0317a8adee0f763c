package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
)

// ferryCLI runs the ferry binary against p with args and stdin, and returns
// its stdout, stderr and whether it exited 0.
func ferryCLI(t *testing.T, p *process, stdin string, args ...string) (stdout, stderr string, ok bool) {
	t.Helper()
	cmd := exec.Command(buildFerry(t), args...)
	cmd.Env = append(cmd.Environ(), "FERRY_SERVER="+p.grpcAddr)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if _, isExit := err.(*exec.ExitError); err != nil && !isExit {
		t.Fatalf("run ferry %v: %v", args, err)
	}
	return out.String(), errb.String(), err == nil
}

func mustCLI(t *testing.T, p *process, stdin string, args ...string) string {
	t.Helper()
	out, errOut, ok := ferryCLI(t, p, stdin, args...)
	if !ok {
		t.Fatalf("ferry %s failed: %s", strings.Join(args, " "), errOut)
	}
	return out
}

// jsonLines decodes one JSON object per line of out.
func jsonLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var objs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not one JSON object per line: %q: %v", line, err)
		}
		objs = append(objs, m)
	}
	return objs
}

func TestCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary")
	}
	p := startFerry(t, t.TempDir())

	mustCLI(t, p, "", "topic", "create", "orders", "--partitions", "3", "--retention-messages", "1000", "--dedup-window", "5m")
	mustCLI(t, p, "", "topic", "create", "orders", "--partitions", "3", "--retention-messages", "1000", "--dedup-window", "5m")
	if _, errOut, ok := ferryCLI(t, p, "", "topic", "create", "orders", "--partitions", "2"); ok || !strings.Contains(errOut, "AlreadyExists") {
		t.Fatalf("conflicting create: ok=%t stderr=%q", ok, errOut)
	}

	out := mustCLI(t, p, "", "pub", "orders", "margherita", "--key", "table-7", "--header", "source=till", "--id", "order-1")
	if !strings.HasPrefix(out, "partition=") || !strings.Contains(out, "offset=0 duplicate=false") {
		t.Fatalf("pub printed %q", out)
	}
	dup := jsonLines(t, mustCLI(t, p, "", "pub", "orders", "margherita again", "--key", "table-7", "--id", "order-1", "-o", "json"))
	if dup[0]["duplicate"] != true || dup[0]["id"] != "order-1" {
		t.Fatalf("republish = %v, want duplicate of order-1", dup[0])
	}
	part := dup[0]["partition"].(float64)

	var lines strings.Builder
	for i := range 250 {
		fmt.Fprintf(&lines, "line %d\n", i)
	}
	results := jsonLines(t, mustCLI(t, p, lines.String(), "pub", "orders", "--partition", "2", "-o", "json"))
	if len(results) != 250 {
		t.Fatalf("stdin pub printed %d results, want 250", len(results))
	}
	ids := map[string]bool{}
	for i, r := range results {
		if r["partition"] != 2.0 || r["duplicate"] != false || ids[r["id"].(string)] {
			t.Fatalf("result %d = %v", i, r)
		}
		ids[r["id"].(string)] = true
	}
	// Offsets on partition 2 are in input order (one stream, in order).
	base := results[0]["offset"].(float64)
	for i, r := range results {
		if r["offset"].(float64) != base+float64(i) {
			t.Fatalf("line %d at offset %v, want %v", i, r["offset"], base+float64(i))
		}
	}

	topic := jsonLines(t, mustCLI(t, p, "", "topic", "get", "orders", "-o", "json"))[0]
	if topic["partitions"] != 3.0 || topic["dedup_window"] != "5m0s" || topic["retention_max_messages"] != 1000.0 {
		t.Fatalf("topic get = %v", topic)
	}
	// The text says which retention limits are unset, not "bytes=0".
	if text := mustCLI(t, p, "", "topic", "get", "orders"); !strings.Contains(text, "retention=age=none bytes=none messages=1000 ") {
		t.Fatalf("topic get = %q, want retention=age=none bytes=none messages=1000", text)
	}
	stats := topic["partition_stats"].([]any)
	if head := stats[2].(map[string]any)["head_offset"].(float64); head < 250 {
		t.Fatalf("partition 2 head %v, want at least 250", head)
	}
	// update changes only the flags given.
	upd := jsonLines(t, mustCLI(t, p, "", "topic", "update", "orders", "--retention-age", "48h", "-o", "json"))[0]
	if upd["retention_max_age"] != "48h0m0s" || upd["retention_max_messages"] != 1000.0 || upd["dedup_window"] != "5m0s" {
		t.Fatalf("topic update = %v, want only retention_max_age changed", upd)
	}
	if _, errOut, ok := ferryCLI(t, p, "", "topic", "update", "orders"); ok || !strings.Contains(errOut, "nothing to change") {
		t.Fatalf("update with no flags: ok=%t stderr=%q", ok, errOut)
	}
	if list := jsonLines(t, mustCLI(t, p, "", "topic", "list", "-o", "json")); len(list) != 1 || list[0]["name"] != "orders" {
		t.Fatalf("topic list = %v", list)
	}

	msgs := jsonLines(t, mustCLI(t, p, "", "read", "orders", "--partition", fmt.Sprint(part), "-o", "json"))
	if len(msgs) < 1 || msgs[0]["payload"] != "margherita" || msgs[0]["key"] != "table-7" || msgs[0]["id"] != "order-1" ||
		msgs[0]["headers"].(map[string]any)["source"] != "till" || msgs[0]["publish_time"] == "" {
		t.Fatalf("read = %v", msgs)
	}
	tail := jsonLines(t, mustCLI(t, p, "", "read", "orders", "--partition", "2", "--from", fmt.Sprint(base+10), "--max", "5", "-o", "json"))
	if len(tail) != 5 || tail[0]["payload"] != "line 10" || tail[4]["offset"] != base+14 {
		t.Fatalf("read --from --max = %v", tail)
	}

	// A payload that is not UTF-8 comes back in base64, flagged.
	bin := jsonLines(t, mustCLI(t, p, "", "pub", "orders", "\xff\xfe-binary", "--partition", "0", "-o", "json"))[0]
	raw := jsonLines(t, mustCLI(t, p, "", "read", "orders", "--partition", "0", "--from", fmt.Sprint(bin["offset"]), "--max", "1", "-o", "json"))[0]
	if raw["payload_base64"] != true || raw["payload"] != base64.StdEncoding.EncodeToString([]byte("\xff\xfe-binary")) {
		t.Fatalf("binary payload read back as %v", raw)
	}

	for _, bad := range [][]string{
		{"pub", "nope", "x"},
		{"pub", "bad name", "x"},
		{"pub", "orders", "x", "--partition", "3"},
		{"read", "orders", "--partition", "0", "--from", "99999"},
		{"topic", "get", "nope"},
		{"topic", "delete", "nope"},
		{"topic", "create", "t", "--partitions", "2000"},
	} {
		out, errOut, ok := ferryCLI(t, p, "", bad...)
		if ok || out != "" || !strings.HasPrefix(errOut, "ferry: ") {
			t.Errorf("ferry %v: ok=%t stdout=%q stderr=%q; want a failure with the server's message", bad, ok, out, errOut)
		}
	}
	if _, errOut, _ := ferryCLI(t, p, "", "pub", "orders", "x", "--partition", "3"); !strings.Contains(errOut, "partition 3 is out of range") {
		t.Errorf("out-of-range partition: stderr %q does not say what is wrong", errOut)
	}

	mustCLI(t, p, "", "topic", "delete", "orders")
	if list := mustCLI(t, p, "", "topic", "list"); list != "" {
		t.Fatalf("topic list after delete = %q", list)
	}
}
