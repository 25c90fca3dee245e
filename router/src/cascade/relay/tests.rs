//! The relay machines on a virtual clock: a send side and a receive side joined by hand.

use super::rx::{LOSS_DEADLINE, NACK_RETRY, REORDER_WAIT};
use super::*;
use crate::cascade::sim::packet;
use crate::media::WorkerId;
use bytes::Bytes;
use kaskade_protocol::cascade as cpb;
use kaskade_protocol::TrackId;
use std::time::{Duration, Instant};
use str0m::media::MediaKind;

const TRACK: TrackId = TrackId(7);
const NUM: u32 = 1;

fn route(worker: u16) -> RxRoute {
    RxRoute {
        track: TRACK,
        worker: WorkerId(worker),
        kind: MediaKind::Video,
    }
}

/// A send side with the track announced, and what it emits for `seqs`: (codec, datagrams).
fn send(
    tx: &mut RelayTx,
    seqs: impl IntoIterator<Item = u64>,
    len: usize,
    max: usize,
) -> (Vec<cpb::CodecParams>, Vec<Bytes>) {
    for s in seqs {
        tx.handle_packet(
            &packet(Instant::now(), TRACK, MediaKind::Video, 0, s, len),
            Some(max),
        );
    }
    drain(tx)
}

fn drain(tx: &mut RelayTx) -> (Vec<cpb::CodecParams>, Vec<Bytes>) {
    let (mut codecs, mut dgs) = (Vec::new(), Vec::new());
    while let Some(o) = tx.poll_output() {
        match o {
            TxOutput::Frame(cpb::frame::Msg::Codec(c)) => codecs.push(c.params.unwrap()),
            TxOutput::Frame(f) => panic!("unexpected frame {f:?}"),
            TxOutput::Datagram { data, .. } => dgs.push(data),
        }
    }
    (codecs, dgs)
}

fn receiver(codec: &cpb::CodecParams) -> RelayRx {
    let mut rx = RelayRx::new();
    rx.set_route(NUM, Some(route(0)));
    rx.set_codec(NUM, codec);
    rx
}

fn delivered(rx: &mut RelayRx) -> Vec<u64> {
    let mut seqs = Vec::new();
    while let Some((_, batch)) = rx.poll_batch() {
        seqs.extend(batch.iter().map(|p| p.seq));
    }
    seqs
}

fn nacks(rx: &mut RelayRx) -> Vec<u32> {
    let mut v = Vec::new();
    while let Some(n) = rx.poll_nack() {
        assert_eq!((n.link_track, n.layer), (NUM, 0));
        v.extend(n.seqs);
    }
    v
}

#[test]
fn a_gap_is_nacked_after_the_reorder_wait_then_twice_more_then_counted_lost() {
    let t0 = Instant::now();
    let mut tx = RelayTx::new();
    tx.map(TRACK, Some(NUM));
    let (codec, dgs) = send(&mut tx, 1..=5, 100, 1200);
    assert_eq!(codec.len(), 1, "the codec goes before the first packet");
    let mut rx = receiver(&codec[0]);
    for (i, d) in dgs.into_iter().enumerate() {
        if i != 2 && i != 3 {
            rx.handle_datagram(t0, d);
        }
    }
    assert_eq!(delivered(&mut rx), vec![1, 2], "5 waits behind the gap");
    assert_eq!(nacks(&mut rx), Vec::<u32>::new(), "not at once");
    assert_eq!(rx.poll_timeout(), Some(t0 + REORDER_WAIT));
    rx.handle_timeout(t0 + REORDER_WAIT);
    assert_eq!(delivered(&mut rx), vec![5], "released when the gap ages");
    assert_eq!(nacks(&mut rx), vec![3, 4], "NACKed after the reorder wait");
    assert_eq!(rx.poll_timeout(), Some(t0 + REORDER_WAIT + NACK_RETRY));
    let mut t = t0;
    let mut tries = 1;
    while let Some(next) = rx.poll_timeout() {
        t = next;
        rx.handle_timeout(t);
        if !nacks(&mut rx).is_empty() {
            tries += 1;
        }
    }
    assert_eq!(tries, 3, "three NACKs in all");
    assert_eq!(t, t0 + LOSS_DEADLINE);
    let s = rx.stats();
    assert_eq!((s.nacked, s.lost, s.repaired), (6, 2, 0));
}

#[test]
fn a_nacked_packet_is_resent_from_the_cache_and_counts_as_repaired() {
    let t0 = Instant::now();
    let mut tx = RelayTx::new();
    tx.map(TRACK, Some(NUM));
    let (codec, dgs) = send(&mut tx, 1..=4, 100, 1200);
    let mut rx = receiver(&codec[0]);
    rx.handle_datagram(t0, dgs[0].clone());
    rx.handle_datagram(t0, dgs[3].clone());
    rx.handle_timeout(t0 + REORDER_WAIT);
    let missing = nacks(&mut rx);
    assert_eq!(missing, vec![2, 3]);
    tx.handle_nack(NUM, 0, &missing);
    let (_, repairs) = drain(&mut tx);
    assert_eq!(repairs.len(), 2);
    for d in repairs {
        rx.handle_datagram(t0 + Duration::from_millis(30), d);
    }
    assert_eq!(delivered(&mut rx), vec![1, 4, 2, 3]);
    assert_eq!(rx.poll_timeout(), None, "nothing left to ask for");
    assert_eq!(rx.stats().repaired, 2);
    assert_eq!(rx.stats().lost, 0);
    // Packets that left the cache cannot be repaired.
    tx.handle_nack(NUM, 0, &[1_000_000]);
    assert_eq!(tx.stats().not_cached, 1);
}

#[test]
fn fragmented_packets_cross_and_their_fragments_are_repaired() {
    let t0 = Instant::now();
    let mut tx = RelayTx::new();
    tx.map(TRACK, Some(NUM));
    // 3000-byte payloads under a 1000-byte datagram limit: 4 fragments each.
    let (codec, dgs) = send(&mut tx, 1..=3, 3000, 1000);
    assert_eq!(dgs.len(), 12);
    let mut rx = receiver(&codec[0]);
    // The second packet loses a fragment: it never completes, the third shows the gap.
    for (i, d) in dgs.iter().enumerate() {
        if i != 5 {
            rx.handle_datagram(t0, d.clone());
        }
    }
    assert_eq!(delivered(&mut rx), vec![1]);
    rx.handle_timeout(t0 + REORDER_WAIT);
    assert_eq!(delivered(&mut rx), vec![3]);
    let missing = nacks(&mut rx);
    assert_eq!(missing, vec![2]);
    tx.handle_nack(NUM, 0, &missing);
    let (_, again) = drain(&mut tx);
    assert_eq!(again.len(), 4, "every fragment of the packet is resent");
    for d in again {
        rx.handle_datagram(t0 + Duration::from_millis(20), d);
    }
    let got = delivered(&mut rx);
    assert_eq!(got, vec![2]);
    assert_eq!(rx.stats().repaired, 1);
}

#[test]
fn packets_wait_for_their_codec_within_a_bound() {
    let t0 = Instant::now();
    let mut tx = RelayTx::new();
    tx.map(TRACK, Some(NUM));
    let n = rx::EARLY_PACKETS as u64 + 10;
    let (codec, dgs) = send(&mut tx, 1..=n, 50, 1200);
    let mut rx = RelayRx::new();
    rx.set_route(NUM, Some(route(3)));
    for d in dgs {
        rx.handle_datagram(t0, d);
    }
    assert!(
        delivered(&mut rx).is_empty(),
        "held until the codec is known"
    );
    assert_eq!(rx.stats().early_dropped, 10);
    rx.set_codec(NUM, &codec[0]);
    let (worker, batch) = rx.poll_batch().unwrap();
    assert_eq!(worker, WorkerId(3));
    assert_eq!(batch.len(), rx::EARLY_PACKETS, "one batch for the worker");
    assert!(rx.poll_batch().is_none());
}

#[test]
fn a_batch_per_home_worker_and_nothing_for_unknown_numbers() {
    let t0 = Instant::now();
    let mut tx = RelayTx::new();
    let other = TrackId(8);
    tx.map(TRACK, Some(NUM));
    tx.map(other, Some(2));
    for s in 1..=3 {
        tx.handle_packet(
            &packet(Instant::now(), TRACK, MediaKind::Video, 0, s, 10),
            Some(1200),
        );
        tx.handle_packet(
            &packet(Instant::now(), other, MediaKind::Audio, 0, s, 10),
            Some(1200),
        );
    }
    let (codecs, dgs) = drain(&mut tx);
    let mut rx = RelayRx::new();
    rx.set_route(NUM, Some(route(0)));
    rx.set_route(
        2,
        Some(RxRoute {
            track: other,
            worker: WorkerId(1),
            kind: MediaKind::Audio,
        }),
    );
    rx.set_codec(NUM, &codecs[0]);
    rx.set_codec(2, &codecs[1]);
    for d in &dgs {
        rx.handle_datagram(t0, d.clone());
    }
    let mut batches = Vec::new();
    while let Some((w, b)) = rx.poll_batch() {
        batches.push((w, b.len()));
    }
    batches.sort();
    assert_eq!(batches, vec![(WorkerId(0), 3), (WorkerId(1), 3)]);
    // Withdrawn: its packets go nowhere, and are counted.
    rx.set_route(2, None);
    rx.handle_datagram(t0, dgs[1].clone());
    assert_eq!(rx.stats().unrouted, 1);
    rx.handle_datagram(t0, Bytes::from_static(b"\xff\xff"));
    assert_eq!(rx.stats().malformed, 1);
}

#[test]
fn a_link_that_is_down_drops_and_counts() {
    let mut tx = RelayTx::new();
    tx.map(TRACK, Some(NUM));
    tx.handle_packet(
        &packet(Instant::now(), TRACK, MediaKind::Video, 0, 1, 10),
        None,
    );
    assert_eq!(tx.stats().dropped, 1);
    assert!(tx.poll_output().is_none());
    // Unannounced tracks are not this link's business.
    tx.handle_packet(
        &packet(Instant::now(), TrackId(99), MediaKind::Video, 0, 1, 10),
        Some(1200),
    );
    assert_eq!(tx.stats().packets, 1);
    // A new connection starts afresh: the codec is sent again.
    tx.reset();
    tx.map(TRACK, Some(NUM));
    let (codec, dgs) = send(&mut tx, [2], 10, 1200);
    assert_eq!((codec.len(), dgs.len()), (1, 1));
}

/// Sequence numbers delivered with the resync flag.
fn resynced(rx: &mut RelayRx) -> Vec<u64> {
    let mut seqs = Vec::new();
    while let Some((_, batch)) = rx.poll_batch() {
        seqs.extend(batch.iter().filter(|p| p.resync).map(|p| p.seq));
    }
    seqs
}

#[test]
fn the_first_packet_after_packets_lost_for_good_carries_resync() {
    let t0 = Instant::now();
    let mut tx = RelayTx::new();
    tx.map(TRACK, Some(NUM));
    let (codec, dgs) = send(&mut tx, 1..=200, 100, 1200);
    let mut rx = receiver(&codec[0]);
    // The first on a connection: what came before it (on a broken one) is gone.
    rx.handle_datagram(t0, dgs[0].clone());
    rx.handle_datagram(t0, dgs[1].clone());
    assert_eq!(resynced(&mut rx), vec![1]);
    // A gap that is repaired: no resync.
    rx.handle_datagram(t0, dgs[3].clone());
    rx.handle_datagram(t0, dgs[2].clone());
    assert_eq!(resynced(&mut rx), Vec::<u64>::new());
    // A gap given up on: the next packet after the loss deadline carries it, once.
    rx.handle_datagram(t0, dgs[5].clone());
    nacks(&mut rx);
    let mut t = t0;
    while let Some(next) = rx.poll_timeout() {
        t = next;
        rx.handle_timeout(t);
        nacks(&mut rx);
    }
    assert_eq!(rx.stats().lost, 1);
    rx.handle_datagram(t, dgs[6].clone());
    rx.handle_datagram(t, dgs[7].clone());
    assert_eq!(resynced(&mut rx), vec![7]);
    // A gap too large to NACK.
    rx.handle_datagram(t, dgs[150].clone());
    assert_eq!(nacks(&mut rx), Vec::<u32>::new());
    assert_eq!(resynced(&mut rx), vec![151]);
    assert_eq!(rx.stats().resyncs, 3);
}

#[test]
fn a_resync_received_is_kept_and_sent_on() {
    let t0 = Instant::now();
    let mut tx = RelayTx::new();
    tx.map(TRACK, Some(NUM));
    let (codec, dgs) = send(&mut tx, 1..=3, 100, 1200);
    let mut rx = receiver(&codec[0]);
    for d in dgs {
        rx.handle_datagram(t0, d);
    }
    assert_eq!(resynced(&mut rx), vec![1], "the first only");
    // Relayed onward (a middle router), the flag travels with the packet.
    let mut onward = RelayTx::new();
    onward.map(TRACK, Some(NUM));
    let mut flagged = packet(t0, TRACK, MediaKind::Video, 0, 2, 100);
    flagged.resync = true;
    onward.handle_packet(&packet(t0, TRACK, MediaKind::Video, 0, 1, 100), Some(1200));
    onward.handle_packet(&flagged, Some(1200));
    let (codec, dgs) = drain(&mut onward);
    let mut far = receiver(&codec[0]);
    for d in dgs {
        far.handle_datagram(t0, d);
    }
    assert_eq!(
        resynced(&mut far),
        vec![1, 2],
        "its own first, and the one relayed"
    );
}

#[test]
fn reordered_packets_are_not_nacked_and_go_on_in_order() {
    let t0 = Instant::now();
    let mut tx = RelayTx::new();
    tx.map(TRACK, Some(NUM));
    let (codec, dgs) = send(&mut tx, 1..=6, 100, 1200);
    let mut rx = receiver(&codec[0]);
    let ms = Duration::from_millis;
    // 1, 4, 3, 2, 6, 5: each overtaken by less than the reorder wait.
    for (i, at) in [(0, 0), (3, 1), (2, 2), (1, 3), (5, 4), (4, 6)] {
        rx.handle_datagram(t0 + ms(at), dgs[i].clone());
    }
    assert_eq!(
        delivered(&mut rx),
        vec![1, 2, 3, 4, 5, 6],
        "in sequence order"
    );
    let mut t = t0;
    while let Some(next) = rx.poll_timeout() {
        t = next;
        rx.handle_timeout(t);
    }
    assert_eq!(nacks(&mut rx), Vec::<u32>::new(), "nothing asked for again");
    let s = rx.stats();
    assert_eq!((s.nacked, s.lost, s.delivered), (0, 0, 6));
    assert!(t <= t0 + ms(6), "no timer left behind");
}

#[test]
fn packets_held_behind_a_gap_are_bounded() {
    let t0 = Instant::now();
    let mut tx = RelayTx::new();
    tx.map(TRACK, Some(NUM));
    let n = super::rx::MAX_HELD as u64 + 50;
    // Payloads of 1 byte: many packets, one gap (2) kept young.
    let (codec, dgs) = send(&mut tx, 1..=n + 2, 1, 1200);
    let mut rx = receiver(&codec[0]);
    rx.handle_datagram(t0, dgs[0].clone());
    for d in dgs.iter().skip(2).take(n as usize) {
        rx.handle_datagram(t0, d.clone());
    }
    let got = delivered(&mut rx);
    assert_eq!(got.len(), 1 + 50, "1, then the oldest beyond the bound");
    assert_eq!(got[1..], (3..53).collect::<Vec<u64>>()[..]);
}

#[test]
fn a_keyframe_overtaken_at_the_start_goes_on_first_packet_first() {
    let t0 = Instant::now();
    let mut tx = RelayTx::new();
    tx.map(TRACK, Some(NUM));
    // 101 starts a keyframe (the sim's packets: every 100th); 102 overtakes it.
    let (codec, dgs) = send(&mut tx, 101..=104, 100, 1200);
    let mut rx = receiver(&codec[0]);
    for i in [1, 0, 3, 2] {
        rx.handle_datagram(t0, dgs[i].clone());
    }
    assert_eq!(
        delivered(&mut rx),
        Vec::<u64>::new(),
        "held for the reorder wait"
    );
    assert_eq!(rx.poll_timeout(), Some(t0 + REORDER_WAIT));
    rx.handle_timeout(t0 + REORDER_WAIT);
    let mut got = Vec::new();
    while let Some((_, batch)) = rx.poll_batch() {
        got.extend(batch.iter().map(|p| (p.seq, p.resync)));
    }
    assert_eq!(
        got,
        vec![(101, true), (102, false), (103, false), (104, false)],
        "in order, the resync flag on the first released (not on 102, the first to arrive)"
    );
    assert_eq!(rx.stats().nacked, 0);
}

#[test]
fn one_nack_queues_at_most_a_cache_of_repairs() {
    let mut tx = RelayTx::new();
    tx.map(TRACK, Some(NUM));
    let (_, dgs) = send(&mut tx, 1..=4, 100, 1200);
    assert_eq!(dgs.len(), 4);
    // A peer asks for the same packet far more often than the cache holds packets.
    tx.handle_nack(NUM, 0, &vec![2; 10 * tx::CACHE_PACKETS]);
    let (_, repairs) = drain(&mut tx);
    assert_eq!(repairs.len(), tx::CACHE_PACKETS);
    assert_eq!(tx.stats().not_cached, 9 * tx::CACHE_PACKETS as u64);
}

#[test]
fn a_packet_of_a_layer_no_track_can_have_is_refused() {
    let t0 = Instant::now();
    let mut tx = RelayTx::new();
    tx.map(TRACK, Some(NUM));
    let layer = crate::media::layer::MAX_LAYERS as u8;
    tx.handle_packet(
        &packet(t0, TRACK, MediaKind::Video, layer, 1, 100),
        Some(1200),
    );
    let (codec, dgs) = drain(&mut tx);
    let mut rx = receiver(&codec[0]);
    for d in dgs {
        rx.handle_datagram(t0, d);
    }
    assert_eq!(delivered(&mut rx), Vec::<u64>::new());
    assert_eq!(rx.stats().malformed, 1);
}
