package consumer

// The reads the machine asks for (fetches, rereads) and the id lookups of
// acks after a restart, done against a Log. The loop and the test harness
// both read through these, so the harness tests the loop's reads.

import (
	"context"

	"github.com/ferrymq/ferry/storage"
)

// atHead moves a fetch of the head (f.latest) to start no earlier than the
// partition's head now: what lies before it is skipped.
func atHead(lg Log, topic string, f fetch) (fetch, error) {
	if !f.latest {
		return f, nil
	}
	parts, err := lg.Partitions(topic)
	if err != nil {
		return f, err
	}
	if int(f.part) < len(parts) {
		f.from = max(f.from, parts[f.part].Head)
	}
	return f, nil
}

// readFetch reads partition f.part from f.from (atHead already applied).
// With wait, a read that finds nothing waits for the head to pass f.from
// and reads again; without, nothing at the head is nothing. For
// f.ackedIDs it also looks up which of the messages' ids subscription sid
// acked (acked[i] for msgs[i]; nil if none has an id).
func readFetch(ctx context.Context, lg Log, topic string, sid uint32, f fetch, wait bool) (msgs []storage.Message, acked []bool, err error) {
	msgs, err = lg.Read(ctx, topic, f.part, f.from, f.max, fetchBytes)
	if wait && err == nil && len(msgs) == 0 {
		if _, err = lg.WaitHead(ctx, topic, f.part, f.from); err == nil {
			msgs, err = lg.Read(ctx, topic, f.part, f.from, f.max, fetchBytes)
		}
	}
	if err != nil || !f.ackedIDs {
		return msgs, nil, err
	}
	ids := make([]string, len(msgs))
	hasIDs := false
	for i := range msgs {
		ids[i] = msgs[i].ID
		hasIDs = hasIDs || ids[i] != ""
	}
	if !hasIDs {
		return msgs, nil, nil
	}
	acked, err = lg.AckedIDs(topic, sid, ids)
	return msgs, acked, err
}

// readAgain reads the messages of reread r, for redeliveries.
func readAgain(ctx context.Context, lg Log, topic string, r reread) ([]storage.Message, error) {
	return lg.Read(ctx, topic, r.part, r.from, int(r.to-r.from), fetchBytes)
}

// readIDs reads the message ids of deliveries, by delivery id; one that
// cannot be read (gone with retention, say) is left out.
func readIDs(ctx context.Context, lg Log, topic string, ids []DeliveryID) map[DeliveryID]string {
	found := make(map[DeliveryID]string, len(ids))
	for _, id := range ids {
		msgs, err := lg.Read(ctx, topic, id.Partition, id.Offset, 1, 1<<30)
		if err == nil && len(msgs) == 1 && msgs[0].Offset == id.Offset {
			found[id] = msgs[0].ID
		}
	}
	return found
}
