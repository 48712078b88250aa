//! The uplink bench's counting subscriber (tests/benches/uplink.rs module
//! docs): rumqttc on its own thread, decoding each device message and
//! counting distinct `(session_id, seq)` with a per-session bitset.

use anyhow::{ensure, Result};
use rae_protocol::Envelope;
use rumqttc::{AsyncClient, MqttOptions, Packet, QoS};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// What the subscriber has seen since its last [`BenchSub::reset`].
#[derive(Debug, Default, Clone)]
pub struct SubStats {
    pub first: Option<Instant>,
    /// The receive that added the latest new `(session_id, seq)`.
    pub last_new: Option<Instant>,
    pub first_status: Option<Instant>,
    pub distinct: u64,
    /// Device messages, duplicates included.
    pub messages: u64,
    pub undecodable: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
struct SubState {
    stats: SubStats,
    /// The subscriber thread's id, for its CPU time.
    tid: i64,
    /// Per session: a bitset of the seqs received.
    seen: HashMap<u128, Vec<u64>>,
    subscribed: bool,
}

/// The counting subscriber (see the module docs). Dropping it disconnects.
pub struct BenchSub {
    state: Arc<Mutex<SubState>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

fn lock(state: &Mutex<SubState>) -> MutexGuard<'_, SubState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl BenchSub {
    pub fn connect(port: u16, client_id: &str) -> Result<BenchSub> {
        let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
        opts.set_clean_session(false)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(opts, 64);
        let state = Arc::new(Mutex::new(SubState::default()));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let shared = state.clone();
        let thread = std::thread::Builder::new()
            .name("bench-sub".into())
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                lock(&shared).tid = i64::from(unsafe { libc::gettid() });
                runtime.block_on(async move {
                    loop {
                        let event = tokio::select! {
                            _ = &mut stopped => break,
                            event = events.poll() => event,
                        };
                        match event {
                            Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => {
                                record(&shared, &p.topic, &p.payload);
                            }
                            Ok(rumqttc::Event::Incoming(Packet::ConnAck(ack))) => {
                                if ack.session_present {
                                    lock(&shared).subscribed = true;
                                } else {
                                    let _ = client.try_subscribe("rae/v1/+/#", QoS::AtLeastOnce);
                                }
                            }
                            Ok(rumqttc::Event::Incoming(Packet::SubAck(_))) => {
                                lock(&shared).subscribed = true;
                            }
                            Ok(_) => {}
                            Err(e) => {
                                lock(&shared).stats.last_error = Some(e.to_string());
                                tokio::select! {
                                    _ = &mut stopped => break,
                                    _ = tokio::time::sleep(Duration::from_millis(2)) => {}
                                }
                            }
                        }
                    }
                    if client.try_disconnect().is_ok() {
                        let _ =
                            tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
                    }
                })
            })?;
        let sub = BenchSub {
            state,
            stop: Some(stop),
            thread: Some(thread),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !lock(&sub.state).subscribed {
            ensure!(
                Instant::now() < deadline,
                "subscriber: not subscribed within 5 s ({:?})",
                lock(&sub.state).stats.last_error
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(sub)
    }

    /// The subscriber thread's CPU time so far, in ms.
    pub fn cpu_ms(&self) -> Result<f64> {
        let tid = lock(&self.state).tid;
        super::cpu_ms(&format!("/proc/self/task/{tid}/stat"))
    }

    pub fn snapshot(&self) -> SubStats {
        lock(&self.state).stats.clone()
    }

    pub fn reset(&self) {
        let mut st = lock(&self.state);
        st.stats = SubStats::default();
        st.seen.clear();
    }
}

fn record(state: &Mutex<SubState>, topic: &str, payload: &[u8]) {
    let now = Instant::now();
    if topic.ends_with("/status") {
        let mut st = lock(state);
        st.stats.first_status.get_or_insert(now);
        return;
    }
    if !topic.contains("/devices/") || payload.is_empty() {
        return;
    }
    let decoded = Envelope::decode(payload);
    let mut st = lock(state);
    let env = match decoded {
        Ok(env) => env,
        Err(_) => {
            st.stats.undecodable += 1;
            return;
        }
    };
    st.stats.messages += 1;
    st.stats.first.get_or_insert(now);
    let bits = st.seen.entry(env.session_id.as_u128()).or_default();
    let (word, bit) = ((env.seq / 64) as usize, env.seq % 64);
    if bits.len() <= word {
        bits.resize(word + 1, 0);
    }
    if bits[word] & (1 << bit) == 0 {
        bits[word] |= 1 << bit;
        st.stats.distinct += 1;
        st.stats.last_new = Some(now);
    }
}

impl Drop for BenchSub {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
