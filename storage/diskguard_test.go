package storage

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/clock"
)

const mib = 1 << 20

// fakeDisk is a filesystem whose free space the test sets.
type fakeDisk struct{ free atomic.Uint64 }

func (d *fakeDisk) space(string) (uint64, uint64, error) { return d.free.Load(), 1024 * mib, nil }

func newTestGuard(t *testing.T, free uint64) (*diskGuard, *fakeDisk, *clock.Fake) {
	t.Helper()
	clk := clock.NewFake(time.Unix(1e9, 0))
	opts := DefaultOptions(t.TempDir())
	opts.Clock, opts.Logger = clk, benchLogger()
	opts.DiskReserve = DiskReserve{Bytes: 256 * mib}
	disk := &fakeDisk{}
	disk.free.Store(free)
	g := newDiskGuard(&opts, disk.space, free, 1024*mib)
	g.start()
	t.Cleanup(g.stop)
	return g, disk, clk
}

// refused says which of grow, state and free the guard refuses, as "gsf"
// with a dash for each it admits.
func refused(g *diskGuard) string {
	out := ""
	for i, k := range []writeKind{writeGrow, writeState, writeFree} {
		if err := g.admit(k, 0); err != nil {
			var full *DiskFullError
			if !errors.As(err, &full) {
				panic(err)
			}
			out += string("gsf"[i])
		} else {
			out += "-"
		}
	}
	return out
}

// TestDiskGuardLevels walks free space down and up again, polled by the
// fake clock: appends go first, then state writes; deletes and retention
// always go; everything resumes once space is back.
func TestDiskGuardLevels(t *testing.T) {
	g, disk, clk := newTestGuard(t, 300*mib)
	steps := []struct {
		free uint64
		want string
	}{
		{300 * mib, "---"},
		{256 * mib, "---"}, // at the reserve: still fine
		{200 * mib, "g--"},
		{128 * mib, "g--"}, // half the reserve: state writes still go
		{127 * mib, "gs-"},
		{0, "gs-"},
		{200 * mib, "g--"},
		{260 * mib, "g--"}, // above the reserve, but not by a sixteenth of it
		{272 * mib, "---"},
	}
	prev := "---"
	for _, s := range steps {
		disk.free.Store(s.free)
		if got := refused(g); got != prev {
			t.Fatalf("free %d MiB: refused %q before the poll, want %q as before", s.free/mib, got, prev)
		}
		clk.Advance(time.Second)
		if got := refused(g); got != s.want {
			t.Fatalf("free %d MiB: refused %q, want %q", s.free/mib, got, s.want)
		}
		prev = s.want
	}
}

// TestDiskGuardCountsAppends: between polls the guard subtracts what it
// let through (twice: log and table), and looks again after a MiB.
func TestDiskGuardCountsAppends(t *testing.T) {
	g, disk, _ := newTestGuard(t, 257*mib)
	if err := g.admit(writeGrow, 256<<10); err != nil { // 512 KiB counted: 256.5 MiB left
		t.Fatal(err)
	}
	if err := g.admit(writeGrow, 256<<10); err != nil { // 1 MiB counted: 256 MiB left
		t.Fatal(err)
	}
	err := g.admit(writeGrow, 1) // over a MiB: looks again, and the disk says 255 MiB
	if err != nil {
		t.Fatalf("before the disk filled: %v", err)
	}
	disk.free.Store(255 * mib)
	var full *DiskFullError
	if err := g.admit(writeGrow, 600<<10); !errors.As(err, &full) || full.Free != 255*mib || full.Reserve != 256*mib || full.ReadOnly {
		t.Fatalf("append after the disk filled: %v", err)
	}
}

// TestDiskGuardCountsRaftAppends: a replica's raft log appends, which no
// admit counts, make the guard look at the disk after a MiB too, so a
// cluster node sees itself below half the reserve (and refuses appends)
// before the next poll.
func TestDiskGuardCountsRaftAppends(t *testing.T) {
	g, disk, _ := newTestGuard(t, 130*mib)
	disk.free.Store(100 * mib) // a leader's appends filled it; no poll yet
	g.grew(256 << 10)          // 512 KiB counted: 129.5 MiB by the estimate
	if d := g.state(); d.ReadOnly || d.Free != 129*mib+mib/2 {
		t.Fatalf("after 256 KiB appended: %+v, want 129.5 MiB free by the estimate", d)
	}
	g.grew(300 << 10) // over a MiB: looks
	if d := g.state(); !d.ReadOnly || d.Free != 100*mib {
		t.Fatalf("after over a MiB appended: %+v, want read-only at 100 MiB free", d)
	}
}

// TestDiskGuardDiskErrors: ENOSPC makes the store read-only until space
// is back above the reserve; EIO until a restart.
func TestDiskGuardDiskErrors(t *testing.T) {
	g, disk, clk := newTestGuard(t, 300*mib)
	g.observe(fmt.Errorf("commit: %w", syscall.ENOSPC))
	if got := refused(g); got != "gsf" {
		t.Fatalf("after ENOSPC refused %q", got)
	}
	if d := g.state(); !d.ReadOnly || d.Cause == "" {
		t.Fatalf("after ENOSPC state %+v", d)
	}
	disk.free.Store(200 * mib)
	clk.Advance(time.Second)
	if got := refused(g); got != "gsf" {
		t.Fatalf("ENOSPC cleared below the reserve: refused %q", got)
	}
	disk.free.Store(300 * mib)
	clk.Advance(time.Second)
	if got := refused(g); got != "---" {
		t.Fatalf("space back after ENOSPC: refused %q", got)
	}
	g.observe(fmt.Errorf("sync: %w", syscall.EIO))
	clk.Advance(time.Minute)
	if got := refused(g); got != "gsf" {
		t.Fatalf("after EIO and a minute: refused %q, want every write until a restart", got)
	}
	g.observe(errors.New("some other error"))
	g.observe(nil)
}

// TestDiskGuardReopen: a store opened read-only is told to reopen once
// free space is at least half the reserve.
func TestDiskGuardReopen(t *testing.T) {
	g, disk, clk := newTestGuard(t, 0)
	g.openedRO = true
	g.setReadOnly("opened read-only", true)
	for _, free := range []uint64{0, 100 * mib, 127 * mib} {
		disk.free.Store(free)
		clk.Advance(time.Second)
		select {
		case <-g.reopen:
			t.Fatalf("reopen at %d MiB free", free/mib)
		default:
		}
		if got := refused(g); got != "gsf" {
			t.Fatalf("opened read-only: refused %q", got)
		}
	}
	disk.free.Store(128 * mib)
	clk.Advance(time.Second)
	select {
	case <-g.reopen:
	default:
		t.Fatal("no reopen at half the reserve free")
	}
	clk.Advance(time.Second) // closes once only
}

func TestDiskReserve(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want DiskReserve
		bad  bool
	}{
		{in: "512MiB", want: DiskReserve{Bytes: 512 * mib}},
		{in: "2GiB", want: DiskReserve{Bytes: 2 << 30}},
		{in: "1GB", want: DiskReserve{Bytes: 1e9}},
		{in: "1048576", want: DiskReserve{Bytes: mib}},
		{in: "5%", want: DiskReserve{Percent: 5}},
		{in: "12.5%", want: DiskReserve{Percent: 12.5}},
		{in: "0", bad: true},
		{in: "0%", bad: true},
		{in: "100%", bad: true},
		{in: "-1%", bad: true},
		{in: "NaN%", bad: true},
		{in: "5 pct", bad: true},
		{in: "MiB", bad: true},
		{in: "99999999999999999999", bad: true},
		{in: "20000000TiB", bad: true},
	} {
		got, err := ParseDiskReserve(tc.in)
		if tc.bad {
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("ParseDiskReserve(%q) = %v, %v; want ErrInvalidConfig", tc.in, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseDiskReserve(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
		if back, err := ParseDiskReserve(got.String()); err != nil || back != got {
			t.Errorf("%q: String %q does not parse back: %v", tc.in, got.String(), err)
		}
	}

	opts := DefaultOptions("x")
	floor := MinDiskReserve(opts)
	if r, raised := (DiskReserve{Percent: 5}).resolve(1<<30, floor); r != floor || !raised {
		t.Errorf("5%% of 1 GiB resolved to %d (raised %t), want the floor %d", r, raised, floor)
	}
	if r, _ := (DiskReserve{}).resolve(100<<30, floor); r != 5<<30 {
		t.Errorf("the default of 100 GiB resolved to %d, want 5 GiB", r)
	}
	opts.DiskReserve = DiskReserve{Bytes: floor - 1}
	if err := opts.Validate(); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("a reserve below the floor validated: %v", err)
	}
	opts.DiskReserve = DiskReserve{Bytes: floor}
	if err := opts.Validate(); err != nil {
		t.Errorf("a reserve at the floor: %v", err)
	}
}

// TestStoreKeepsDiskReserve: a real store on a disk the test says is low
// refuses appends (Append, a Write with appends) with *DiskFullError and
// changes nothing, while cursor writes, creates and deletes go; below half
// the reserve only deletes go.
func TestStoreKeepsDiskReserve(t *testing.T) {
	ctx := context.Background()
	opts := DefaultOptions(t.TempDir())
	opts.Logger = benchLogger()
	st := openStore(t, opts)
	mustCreate(t, st, "t", TopicConfig{})
	mustCreate(t, st, "gone", TopicConfig{})
	mustAppend(t, st, "t", 0, Message{Payload: []byte("before")})
	sub, err := st.CreateSubscription(ctx, "t", "s", []byte("cfg"), make([][]byte, 1))
	if err != nil {
		t.Fatal(err)
	}
	disk := &fakeDisk{}
	st.guard.space = disk.space
	low := func(free uint64) {
		disk.free.Store(free)
		st.guard.look()
	}
	reserve := st.Disk().Reserve

	low(reserve - 1)
	var full *DiskFullError
	if _, err := st.Append(ctx, "t", 0, []Message{{Payload: []byte("x")}}); !errors.As(err, &full) || full.ReadOnly {
		t.Fatalf("Append below the reserve: %v", err)
	}
	cursor := Write{Topic: "t", Subscription: sub.ID, Cursors: []CursorWrite{{Partition: 0, State: []byte("c1")}}}
	withAppend := cursor
	withAppend.Appends = []AppendBatch{{Topic: "t", Partition: 0, Messages: []Message{{Payload: []byte("out")}}}}
	if _, err := st.Write(ctx, withAppend); !errors.As(err, &full) {
		t.Fatalf("a commit's output below the reserve: %v", err)
	}
	if _, err := st.Write(ctx, cursor); err != nil {
		t.Fatalf("a cursor write below the reserve: %v", err)
	}
	if d := st.Disk(); !d.Low || d.ReadOnly {
		t.Fatalf("Disk below the reserve: %+v", d)
	}

	low(reserve/2 - 1)
	if _, err := st.Write(ctx, cursor); !errors.As(err, &full) || !full.ReadOnly {
		t.Fatalf("a cursor write below half the reserve: %v", err)
	}
	if _, err := st.CreateTopic(ctx, "new", TopicConfig{}); !errors.As(err, &full) {
		t.Fatalf("a create below half the reserve: %v", err)
	}
	if err := st.DeleteTopic(ctx, "gone"); err != nil {
		t.Fatalf("a delete below half the reserve: %v", err)
	}
	if infos, err := st.Partitions("t"); err != nil || infos[0].Head != 1 {
		t.Fatalf("refused writes changed the log: %+v %v", infos, err)
	}

	low(reserve + 1<<20) // above the reserve, but not by a sixteenth of it
	if _, err := st.Append(ctx, "t", 0, []Message{{Payload: []byte("x")}}); !errors.As(err, &full) {
		t.Fatalf("Append just above the reserve after it was low: %v", err)
	}
	low(resumeAt(reserve))
	mustAppend(t, st, "t", 0, Message{Payload: []byte("after")})
}

// TestDropOnLowDiskHoldsUpWrites: a topic deleted on a disk below its
// reserve is dropped with DropPrefix, which fails Badger writes made
// meanwhile; the store's own writes wait for it instead, and the drop
// finishes.
func TestDropOnLowDiskHoldsUpWrites(t *testing.T) {
	ctx := context.Background()
	opts := DefaultOptions(t.TempDir())
	opts.Logger = benchLogger()
	st := openStore(t, opts)
	mustCreate(t, st, "t", TopicConfig{})
	mustCreate(t, st, "gone", TopicConfig{Partitions: 4})
	payload := make([]byte, 4<<10)
	for i := range 400 {
		mustAppend(t, st, "gone", uint32(i%4), Message{Payload: payload}, Message{Payload: payload})
	}
	sub, err := st.CreateSubscription(ctx, "t", "s", []byte("cfg"), make([][]byte, 1))
	if err != nil {
		t.Fatal(err)
	}
	gone, _ := st.Topic("gone")
	disk := &fakeDisk{}
	st.guard.space = disk.space
	disk.free.Store(st.Disk().Reserve - 1)
	st.guard.look()

	done := make(chan error, 1)
	go func() {
		for i := range 300 {
			w := Write{Topic: "t", Subscription: sub.ID, Cursors: []CursorWrite{{Partition: 0, State: []byte(fmt.Sprint(i))}}}
			if _, err := st.Write(ctx, w); err != nil {
				done <- fmt.Errorf("cursor write %d during the drop: %w", i, err)
				return
			}
		}
		done <- nil
	}()
	if err := st.DeleteTopic(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if st.keyAbsent(tombstoneKey(gone.ID()), "") == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the drop did not finish in 10s")
		}
	}
}

// BenchmarkDiskGuardAdmit is the guard's cost on the write path: an
// append of 1 KiB, with a real statfs of the data directory after every
// MiB let through.
//
//	go test -run '^$' -bench DiskGuardAdmit ./storage
func BenchmarkDiskGuardAdmit(b *testing.B) {
	opts := DefaultOptions(b.TempDir())
	opts.Logger = benchLogger()
	free, capacity, err := DiskSpace(opts.Dir)
	if err != nil {
		b.Fatal(err)
	}
	g := newDiskGuard(&opts, DiskSpace, free, capacity)
	if g.reserve >= free {
		b.Skip("the disk under the benchmark is below the default reserve")
	}
	for b.Loop() {
		if err := g.admit(writeGrow, 1<<10); err != nil {
			b.Fatal(err)
		}
	}
}
