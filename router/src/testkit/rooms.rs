//! Rooms the tests build again and again: a publisher with subscribers,
//! connected and subscribed.

use super::Sim;
use kaskade_loadtest::Client;
use kaskade_protocol::v1 as pb;
use std::time::Duration;

/// A publisher and one subscriber in room "r" (see [`Sim::pair`]).
pub struct Pair {
    pub publ: usize,
    pub sub: usize,
    /// What the publisher published.
    pub tracks: Vec<pb::Track>,
    /// The subscriber's subscriptions to all of it.
    pub subs: Vec<pb::Subscription>,
}

impl Sim {
    /// A router with `workers` workers, a publisher whose tracks `publish`
    /// adds and one data-channel subscriber, in room "r", connected, the
    /// subscriber subscribed to everything published.
    pub fn pair(workers: usize, seed: u64, publish: impl FnOnce(&mut Client)) -> (Sim, Pair) {
        let mut sim = Sim::new(workers, seed);
        let (publ, tracks, subs) = sim.publisher_and_subscribers(1, publish);
        let sub = subs[0];
        let subs = sim.subscribe(sub, &tracks);
        (
            sim,
            Pair {
                publ,
                sub,
                tracks,
                subs,
            },
        )
    }

    /// Room "r" with a publisher whose tracks `publish` adds, joined (not
    /// yet connected). Returns the publisher and its tracks.
    pub fn publisher(&mut self, publish: impl FnOnce(&mut Client)) -> (usize, Vec<pb::Track>) {
        self.create_room("r");
        let publ = self.add_client(|c| c);
        publish(&mut self.clients[publ].client);
        let tracks = self.join("r", publ, "pub");
        (publ, tracks)
    }

    /// Room "r" with a publisher whose tracks `publish` adds and `n`
    /// data-channel subscribers, joined in that order (placed by the
    /// router) and connected; nobody subscribed yet. Returns the publisher,
    /// its tracks and the subscribers.
    pub fn publisher_and_subscribers(
        &mut self,
        n: usize,
        publish: impl FnOnce(&mut Client),
    ) -> (usize, Vec<pb::Track>, Vec<usize>) {
        let (publ, tracks) = self.publisher(publish);
        let subs: Vec<usize> = (0..n)
            .map(|i| {
                let c = self.add_client(|c| c);
                self.clients[c].client.add_data_channel("k");
                self.join("r", c, &format!("s{i}"));
                c
            })
            .collect();
        let mut all = subs.clone();
        all.push(publ);
        self.connect(&all);
        (publ, tracks, subs)
    }
}

/// A room with one publisher and subscribers, all connected and subscribed.
pub struct Room {
    pub sim: Sim,
    pub publ: usize,
    pub subs: Vec<usize>,
    /// Each subscriber's media line of the video track.
    pub mids: Vec<str0m::media::Mid>,
    pub video: pb::Track,
    pub events: tokio::sync::broadcast::Receiver<pb::Event>,
}

impl Room {
    /// One publisher of a video track with the given simulcast rids (none:
    /// a single layer) and `subscribers` data-channel-only subscribers,
    /// connected and subscribed to the video track, on `workers` workers.
    pub fn video(workers: usize, rids: &[&str], subscribers: usize, seed: u64) -> Room {
        Room::video_with(
            workers,
            rids,
            subscribers,
            seed,
            kaskade_loadtest::VideoCodec::Vp8,
        )
    }

    /// [`Room::video`] with the given video codec for every client.
    pub fn video_with(
        workers: usize,
        rids: &[&str],
        subscribers: usize,
        seed: u64,
        codec: kaskade_loadtest::VideoCodec,
    ) -> Room {
        let mut sim = Sim::new(workers, seed);
        sim.create_room("r");
        let events = sim.control.watch("r").expect("room exists").events;
        let publ = sim.add_client(|c| c.video_codec(codec));
        sim.clients[publ].client.add_video(rids);
        let tracks = sim.join("r", publ, "pub");
        let subs: Vec<usize> = (0..subscribers)
            .map(|_| sim.add_client(|c| c.video_codec(codec)))
            .collect();
        for (i, s) in subs.iter().enumerate() {
            sim.clients[*s].client.add_data_channel("k");
            sim.join("r", *s, &format!("s{i}"));
        }
        let mut all = subs.clone();
        all.push(publ);
        sim.connect(&all);
        let mut mids = Vec::new();
        for s in &subs {
            let m = sim.subscribe(*s, &tracks);
            mids.push(str0m::media::Mid::from(m[0].mid.as_str()));
        }
        Room {
            sim,
            publ,
            subs,
            mids,
            video: tracks[0].clone(),
            events,
        }
    }

    /// Sets preferences of subscriber `sub` through the real control plane.
    pub fn update(
        &mut self,
        sub: usize,
        f: impl FnOnce(&mut pb::UpdateSubscriptionRequest),
    ) -> pb::SubscriptionState {
        let mut req = pb::UpdateSubscriptionRequest {
            session_id: self.sim.clients[self.subs[sub]]
                .session
                .clone()
                .expect("joined"),
            track_id: self.video.track_id.clone(),
            ..Default::default()
        };
        f(&mut req);
        let control = self.sim.control.clone();
        self.sim
            .api(control.update_subscription(req))
            .expect("update subscription")
            .subscription
            .expect("subscription state")
    }

    /// The simulcast layer (0 = lowest) of the newest packet subscriber
    /// `sub` received, by sequence number (late retransmissions don't count).
    pub fn layer(&self, sub: usize) -> Option<u8> {
        let r = self.sim.clients[self.subs[sub]]
            .client
            .received_on(self.mids[sub])?;
        r.log
            .iter()
            .rev()
            .take(30)
            .max_by_key(|p| p.seq)
            .and_then(|p| p.probe.as_ref())
            .map(|p| kaskade_loadtest::media::split_source_tag(p.source_tag).2)
    }

    /// Runs until subscriber `sub` receives `pred`'s layer; how long it took.
    pub fn wait_layer(
        &mut self,
        sub: usize,
        limit: Duration,
        pred: impl Fn(u8) -> bool,
    ) -> Option<Duration> {
        let t0 = self.sim.now;
        let end = t0 + limit;
        while self.sim.now < end {
            if self.layer(sub).is_some_and(&pred) {
                return Some(self.sim.now - t0);
            }
            self.sim.run_for(Duration::from_millis(5));
        }
        None
    }
}
