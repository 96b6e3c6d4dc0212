//! The driver's timeline, the same in every world: the fault schedule, the control
//! steps (apply, delete, scale), the registry learning of readiness changes after the
//! readiness delay, and scaled-down pods stopping once drained. A world calls
//! [`Driver::advance`] with the scenario's clock — the simulator between steps (so every
//! fault happens at a tick boundary and is the same on every run), a real world when
//! [`Driver::next_due`] comes — and carries out the [`Effects`] it cannot do itself:
//! starting and stopping pods, and link latency.
//!
//! Not here: how a world runs its pods (`crate::pod`) or reaches the network.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mesh::ca::authority::DEFAULT_TTL;
use mesh::ca::service::CaServer;
use mesh::ca::{Authority, CaOptions};
use mesh::control::{ControlEvent, ControlEventKind, ControlEvents, Store};

use crate::bad_identity::Material;
use crate::net::Faults;
use crate::pod::{bad_identities, identity, token};
use crate::recorder::Recorder;
use crate::scenario::{ConfigChange, ConfigStep, FaultKind, ISTIOD, Plan, RootStep, TERMINATION_DRAIN};
use crate::seed::sub_seed;
use crate::workload::{Planned, schedule};
use crate::world::{DRAIN_SLACK, EPOCH_SECS};

/// What a node does to one of its pods. The driver sends a pod's commands in order and only
/// on a change (see [`Faults::crash`]), so they alternate; the node still treats a crash of
/// a pod that is down, or a restart of one that is up, as nothing to do.
pub enum Command {
    Crash(usize),
    Restart(usize),
}

/// Runs one component (istiod's services) started by `start`, crashing it (its task
/// aborted and awaited, so its sockets are gone) and restarting it on `commands`, until
/// the sender is dropped. A crash of a stopped component, or a restart of a running one,
/// is nothing to do.
pub async fn obey(
    commands: &mut tokio::sync::mpsc::UnboundedReceiver<Command>,
    start: impl Fn() -> tokio::task::JoinHandle<()>,
) {
    let mut running = Some(start());
    while let Some(cmd) = commands.recv().await {
        match cmd {
            Command::Crash(_) => {
                if let Some(t) = running.take() {
                    t.abort();
                    let _ = t.await;
                }
            }
            Command::Restart(_) => {
                if running.is_none() {
                    running = Some(start());
                }
            }
        }
    }
}

/// A fault boundary on the driver's timeline.
#[derive(Clone, Copy, Debug)]
struct Action {
    at: Duration,
    fault: usize,
    start: bool,
}

/// What a run starts from, in any world.
pub struct Prepared {
    /// Every request of the run, in intended-time order.
    pub requests: Vec<Planned>,
    pub recorder: Arc<Recorder>,
    /// The fault table: one entry per pod, then istiod's.
    pub faults: Arc<Faults>,
    pub ca: Arc<CaServer>,
    /// The material of each pod with a bad identity.
    pub bad: Arc<BTreeMap<usize, Option<Material>>>,
    /// The control plane's store, as the API server holds it at the start.
    pub store: Arc<Store>,
    /// When the run stops at the latest (the scenario's clock): its duration, the longest
    /// workload timeout and the drain slack.
    pub hard_stop: Duration,
}

/// Prepares a run of `plan` with `seed` whose CA starts at Unix time `unix_now`: the
/// schedule, the recorder, the fault table, the CA (every pod's bootstrap credential
/// known to it), bad identities, and the store.
pub fn prepare(plan: &Plan, seed: u64, unix_now: Duration) -> Prepared {
    let requests = schedule(plan, seed);
    let recorder = Arc::new(Recorder::new(requests.len(), plan.needs_receipts()));
    let mut port_owner = BTreeMap::new();
    for (i, p) in plan.pods.iter().enumerate() {
        for port in [p.app_port, p.inbound_port, p.outbound_port] {
            port_owner.insert(port, i);
        }
    }
    // The fault table's last entry is istiod.
    let faults = Faults::new(plan.pods.len() + 1, port_owner);
    let options =
        CaOptions { default_ttl: DEFAULT_TTL, max_ttl: plan.ca.max_workload_cert_ttl, ..CaOptions::default() };
    let mut authority = Authority::self_signed(options, sub_seed(seed, "ca", 0), unix_now);
    let bad = Arc::new(bad_identities(plan, seed, &mut authority, unix_now));
    let ca = CaServer::new(authority);
    for i in 0..plan.pods.len() {
        ca.credentials().insert(token(seed, i), identity(plan, i));
    }
    let store = Arc::new(
        Store::new(
            plan.registry.clone(),
            plan.resources.clone(),
            plan.egress.clone(),
            crate::scenario::suppressed(&plan.suppress),
        )
        .expect("the scenario's config was validated when it loaded")
        .without_endpoints(plan.pods.iter().filter(|p| !p.running_at_start).map(|p| p.name.as_str())),
    );
    let max_timeout = plan.workloads.iter().map(|w| w.timeout).max().unwrap_or_default();
    let hard_stop = plan.duration + max_timeout + DRAIN_SLACK;
    Prepared { requests, recorder, faults, ca, bad, store, hard_stop }
}

/// What the driver acts on, shared with the world.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub plan: &'a Plan,
    pub faults: &'a Faults,
    pub recorder: &'a Recorder,
    pub store: &'a Store,
    pub ca: &'a CaServer,
}

/// What only the world can do.
pub trait Effects {
    /// Sends `command` to the pods of node `node` (`plan.nodes.len()`: istiod).
    fn command(&self, node: usize, command: Command);
    /// Sets the latency between nodes `from` and `to` (`None`: back to the network's own).
    fn link_latency(&self, from: usize, to: usize, latency: Option<Duration>);
}

/// The timeline of one run and how far it has got.
pub struct Driver {
    actions: Vec<Action>,
    next: usize,
    next_step: usize,
    /// Readiness changes the registry has yet to learn: (due, order) → (pod, ready).
    readiness: BTreeMap<(Duration, usize), (usize, bool)>,
    learned: usize,
    changed: Vec<(usize, bool)>,
    /// Pods scaled down, to stop once drained: (due, pod).
    draining: BTreeMap<(Duration, usize), ()>,
}

impl Driver {
    pub fn new(plan: &Plan) -> Driver {
        let mut actions: Vec<Action> = Vec::new();
        for (i, f) in plan.faults.iter().enumerate() {
            actions.push(Action { at: f.at, fault: i, start: true });
            if let Some(until) = f.until {
                actions.push(Action { at: until, fault: i, start: false });
            }
        }
        actions.sort_by_key(|a| (a.at, !a.start, a.fault));
        Driver {
            actions,
            next: 0,
            next_step: 0,
            readiness: BTreeMap::new(),
            learned: 0,
            changed: Vec::new(),
            draining: BTreeMap::new(),
        }
    }

    /// When something is next due on the scenario's clock (`None`: nothing ever again).
    pub fn next_due(&self, plan: &Plan) -> Option<Duration> {
        [
            self.actions.get(self.next).map(|a| a.at),
            plan.config_steps.get(self.next_step).map(|s| s.at),
            self.readiness.first_key_value().map(|(k, _)| k.0),
            self.draining.first_key_value().map(|(k, _)| k.0),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Does everything due at or before `now` (the scenario's clock), in order: faults,
    /// control steps, pods stopping after their drain, the registry learning readiness.
    pub fn advance(&mut self, now: Duration, cx: &Context<'_>, effects: &impl Effects) {
        let Context { plan, recorder, store, .. } = *cx;
        while self.next < self.actions.len() && self.actions[self.next].at <= now {
            apply(cx, effects, self.actions[self.next], now, &mut self.changed);
            self.next += 1;
        }
        self.learn(now, plan.readiness_delay);
        while self.next_step < plan.config_steps.len() && plan.config_steps[self.next_step].at <= now {
            let step = &plan.config_steps[self.next_step];
            if let ConfigChange::Scale { deployment, replicas, start, stop } = &step.change {
                let verb = if stop.is_empty() { "start" } else { "stop" };
                let pods = if stop.is_empty() { start } else { stop };
                let detail = format!("{deployment} to {replicas} replicas: {verb} {}", names(plan, pods));
                recorder.event(now, "scale", detail);
                for &p in start {
                    effects.command(plan.pods[p].node, Command::Restart(p));
                    self.changed.push((p, true));
                }
                // A pod being deleted leaves the endpoints at once; it stops after draining.
                for &p in stop {
                    publish(store, recorder, &plan.pods[p].name, false, now);
                    self.draining.insert((now + TERMINATION_DRAIN, p), ());
                }
            } else {
                apply_step(store, recorder, step, now);
            }
            self.next_step += 1;
        }
        self.learn(now, plan.readiness_delay);
        while let Some(e) = self.draining.first_entry()
            && e.key().0 <= now
        {
            let (_, pod) = *e.key();
            e.remove();
            effects.command(plan.pods[pod].node, Command::Crash(pod));
        }
        while let Some(e) = self.readiness.first_entry()
            && e.key().0 <= now
        {
            let (pod, ready) = e.remove();
            publish(store, recorder, &plan.pods[pod].name, ready, now);
        }
    }

    /// Queues the readiness changes of pods that went down or came back: the registry
    /// learns each after the readiness delay.
    fn learn(&mut self, now: Duration, delay: Duration) {
        for (pod, ready) in self.changed.drain(..) {
            self.learned += 1;
            self.readiness.insert((now + delay, self.learned), (pod, ready));
        }
    }
}

/// Publishes (`ready`) or withdraws the endpoint of `pod` in the registry; a change is a
/// new version, recorded.
fn publish(store: &Store, recorder: &Recorder, pod: &str, ready: bool, now: Duration) {
    if let Some(acc) = store.set_ready(pod, ready) {
        let what = if ready { "published" } else { "withdrawn" };
        recorder.control_event(ControlEvent {
            at: now,
            proxy: String::new(),
            version: acc.version,
            kind: ControlEventKind::Changed { what: format!("endpoint of {pod} {what}") },
        });
    }
}

/// Applies a config step to the store (as `kubectl apply` / `delete` would to the API
/// server); the control plane pushes what follows.
fn apply_step(store: &Store, recorder: &Recorder, step: &ConfigStep, now: Duration) {
    let (result, what) = match &step.change {
        ConfigChange::Apply(rs) => {
            let keys: Vec<String> = rs.iter().map(|r| r.key().to_string()).collect();
            (store.apply(rs.clone()), format!("apply {}", keys.join(", ")))
        }
        ConfigChange::Delete(keys) => {
            let names: Vec<String> = keys.iter().map(|(k, _)| k.to_string()).collect();
            (store.delete(keys), format!("delete {}", names.join(", ")))
        }
        ConfigChange::Scale { .. } => unreachable!("the driver runs scale steps itself"),
    };
    match result {
        Ok(acc) => recorder.control_event(ControlEvent {
            at: now,
            proxy: String::new(),
            version: acc.version,
            kind: ControlEventKind::Changed { what },
        }),
        Err(findings) => {
            let why: Vec<String> = findings.0.iter().map(|f| f.to_string()).collect();
            recorder.event(now, "config_rejected", format!("{what}: {}", why.join("; ")));
        }
    }
}

fn names(plan: &Plan, pods: &[usize]) -> String {
    pods.iter().map(|&p| plan.pods.get(p).map_or(ISTIOD, |x| x.name.as_str())).collect::<Vec<_>>().join(",")
}

/// Starts or ends a fault. Pods that go down or come back are added to `changed` (the
/// registry learns it after the readiness delay).
fn apply(cx: &Context<'_>, effects: &impl Effects, a: Action, now: Duration, changed: &mut Vec<(usize, bool)>) {
    let Context { plan, faults, recorder, ca, .. } = *cx;
    let f = &plan.faults[a.fault];
    let verb = if a.start { "start" } else { "end" };
    match &f.kind {
        FaultKind::AppErrors { pods, status, rate_ppm } => {
            for &p in pods {
                faults.set_app_errors(p, a.fault, a.start.then_some((*status, *rate_ppm)));
            }
            recorder.event(
                now,
                &format!("fault_{verb}"),
                format!("app_errors {} status {status} rate {rate_ppm} ppm", names(plan, pods)),
            );
        }
        FaultKind::Partition { from, to } => {
            if a.start {
                faults.partition(from, to);
            } else {
                faults.heal(from, to);
            }
            recorder.event(
                now,
                &format!("fault_{verb}"),
                format!("partition [{}] <-> [{}]", names(plan, from), names(plan, to)),
            );
        }
        FaultKind::LinkLatency { from, to, latency } => {
            for &x in from {
                for &y in to {
                    if x == y {
                        continue;
                    }
                    effects.link_latency(x, y, a.start.then_some(*latency));
                }
            }
            let nodes_ = |v: &[usize]| v.iter().map(|&n| plan.nodes[n].as_str()).collect::<Vec<_>>().join(",");
            recorder.event(
                now,
                &format!("fault_{verb}"),
                format!("link_latency [{}] <-> [{}] {latency:?}", nodes_(from), nodes_(to)),
            );
        }
        FaultKind::Crash { pods } => {
            // Crash windows of one pod may overlap or touch: the pod is down while any
            // is active, so only the first start stops it and only the last end restarts it.
            for &p in pods {
                let cmd = if a.start {
                    faults.crash(p).then_some(Command::Crash(p))
                } else {
                    faults.recover(p).then_some(Command::Restart(p))
                };
                if let Some(cmd) = cmd {
                    effects.command(plan.pods.get(p).map_or(plan.nodes.len(), |x| x.node), cmd);
                    if p < plan.pods.len() {
                        changed.push((p, !a.start));
                    }
                }
            }
            recorder.event(now, &format!("fault_{verb}"), format!("crash {}", names(plan, pods)));
        }
        FaultKind::CaOutage => {
            ca.set_up(!a.start);
            recorder.event(now, &format!("fault_{verb}"), format!("ca_outage {ISTIOD}"));
        }
        FaultKind::CaRoot(step) => {
            let unix = Duration::from_secs(EPOCH_SECS) + now;
            ca.rotate(|auth| match step {
                RootStep::AddRoot => auth.add_root(unix),
                RootStep::SignWithNewRoot => auth.sign_with_new_root(),
                RootStep::RemoveOldRoots => {
                    auth.remove_old_roots();
                    Ok(())
                }
            })
            .expect("the scenario's root rotation steps were validated in order");
            recorder.event(
                now,
                "ca_root",
                format!("{} (trust bundle: {} root(s))", step.name(), ca.trust_bundle().len()),
            );
        }
    }
}
