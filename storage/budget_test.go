package storage

import "testing"

func TestSizeFor(t *testing.T) {
	def := DefaultOptions(t.TempDir())
	if got := def.SizeFor(0); got != def {
		t.Errorf("SizeFor(0) changed the options: %+v", got)
	}
	for _, tc := range []struct {
		budget                int64
		memtable, block, tail int64
		maxFootprint          int64 // Badger's share: at most this
	}{
		{budget: 128 << 20, memtable: 8 << 20, block: 4 << 20, tail: 64 << 10, maxFootprint: 48 << 20},
		{budget: 256 << 20, memtable: 8 << 20, block: 8 << 20, tail: 128 << 10, maxFootprint: 80 << 20},
		{budget: 512 << 20, memtable: 16 << 20, block: 16 << 20, tail: 256 << 10, maxFootprint: 128 << 20},
		{budget: 1 << 30, memtable: 32 << 20, block: 32 << 20, tail: 512 << 10, maxFootprint: 256 << 20},
		{budget: 64 << 30, memtable: 64 << 20, block: 256 << 20, tail: 1 << 20, maxFootprint: 1 << 30},
	} {
		o := def.SizeFor(tc.budget)
		if err := o.Validate(); err != nil {
			t.Errorf("SizeFor(%d MiB) does not validate: %v", tc.budget>>20, err)
		}
		if o.MemTableBytes != tc.memtable || o.BlockCacheBytes != tc.block || int64(o.TailCacheBytes) != tc.tail {
			t.Errorf("SizeFor(%d MiB): memtable %d MiB, block cache %d MiB, tail cache %d KiB; want %d MiB, %d MiB, %d KiB",
				tc.budget>>20, o.MemTableBytes>>20, o.BlockCacheBytes>>20, o.TailCacheBytes>>10, tc.memtable>>20, tc.block>>20, tc.tail>>10)
		}
		if fp := o.Footprint(); fp > tc.maxFootprint || fp > tc.budget/2 {
			t.Errorf("SizeFor(%d MiB): Badger's footprint %d MiB, want at most %d MiB and half the budget", tc.budget>>20, fp>>20, tc.maxFootprint>>20)
		}
	}
	// The defaults are those of a 512 MiB budget.
	if got := def.SizeFor(512 << 20); got.MemTableBytes != def.MemTableBytes || got.ValueThreshold != def.ValueThreshold || got.BlockCacheBytes != def.BlockCacheBytes || got.IndexCacheBytes != def.IndexCacheBytes {
		t.Errorf("SizeFor(512 MiB) = memtable %d, block %d, index %d; the defaults are %d, %d, %d",
			got.MemTableBytes, got.BlockCacheBytes, got.IndexCacheBytes, def.MemTableBytes, def.BlockCacheBytes, def.IndexCacheBytes)
	}
}
