//! One consumer group's membership state machine (Kafka's classic protocol). Pure logic: time is
//! passed in, and delayed answers (JoinGroup, SyncGroup) leave through oneshot channels, so the
//! rules can be tested without sockets or clocks.
//!
//! Empty ──join──▶ PreparingRebalance ──all rejoined / deadline──▶ CompletingRebalance
//!   ▲                    ▲   │ (leader gets the members, chooses the assignment)    │ leader's
//!   └── last member ─────┘   └──────── join, leave, session expiry ◀── Stable ◀─────┘ SyncGroup

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use tokio::sync::oneshot;

mod static_members;
#[cfg(test)]
mod tests;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            Self::Empty => "Empty",
            Self::PreparingRebalance => "PreparingRebalance",
            Self::CompletingRebalance => "CompletingRebalance",
            Self::Stable => "Stable",
        }
    }
}

/// What a JoinGroup is answered with.
#[derive(Debug, Clone, Default)]
pub struct JoinResult {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Every member and its metadata, for the leader only.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

/// What a SyncGroup is answered with.
#[derive(Debug, Clone, Default)]
pub struct SyncResult {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

/// A JoinGroup as the state machine needs it.
pub struct JoinRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a new member first gets an id and MEMBER_ID_REQUIRED.
    pub require_known_member_id: bool,
}

pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    last_heard: Instant,
    pending_join: Option<oneshot::Sender<JoinResult>>,
    pending_sync: Option<oneshot::Sender<SyncResult>>,
}

impl Member {
    /// This member's metadata for the group's chosen protocol.
    fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

pub struct Group {
    pub id: String,
    pub state: State,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// Ids handed out with MEMBER_ID_REQUIRED, waiting for their owner's second JoinGroup.
    pending_ids: HashMap<String, Instant>,
    /// Static members: group.instance.id -> the member id that holds it now.
    instances: HashMap<String, String>,
    deadline: Option<Instant>,
    /// A first rebalance waits this long for more members before it completes.
    initial_delay: Duration,
    next_member: u64,
    /// When the group last became empty (ms): its offsets' retention counts from then.
    pub empty_since_ms: i64,
}

fn code(e: ResponseError) -> i16 {
    e.code()
}

impl Group {
    pub fn new(id: &str, initial_delay: Duration) -> Self {
        Self {
            id: id.to_owned(),
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending_ids: HashMap::new(),
            instances: HashMap::new(),
            deadline: None,
            initial_delay,
            next_member: 0,
            empty_since_ms: crate::now_ms(),
        }
    }

    /// No member, none joining: nothing but its committed offsets (if any) is worth keeping.
    pub fn is_idle(&self) -> bool {
        self.state == State::Empty
            && self.members.is_empty()
            && self.pending_ids.is_empty()
            && self.instances.is_empty()
    }

    fn new_member_id(&mut self, client_id: &str) -> String {
        self.next_member += 1;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        format!("{client_id}-{}-{nanos:08x}", self.next_member)
    }

    /// Handles a JoinGroup; the answer comes through `reply`, now or when the rebalance completes.
    pub fn join(&mut self, req: JoinRequest, now: Instant, reply: oneshot::Sender<JoinResult>) {
        let fail = |reply: oneshot::Sender<JoinResult>, error: ResponseError, member_id: String| {
            let _ = reply.send(JoinResult {
                error: code(error),
                generation: -1,
                member_id,
                ..Default::default()
            });
        };
        if !self.members.is_empty() && self.protocol_type.as_deref() != Some(&req.protocol_type) {
            return fail(
                reply,
                ResponseError::InconsistentGroupProtocol,
                req.member_id,
            );
        }
        if !self.members.is_empty() && !req.protocols.iter().any(|(p, _)| self.all_support(p)) {
            return fail(
                reply,
                ResponseError::InconsistentGroupProtocol,
                req.member_id,
            );
        }
        if let Some(instance) = req.instance_id.clone() {
            match self.instances.get(&instance).cloned() {
                Some(holder) if !req.member_id.is_empty() && holder != req.member_id => {
                    return fail(reply, ResponseError::FencedInstanceId, req.member_id);
                }
                Some(holder) if req.member_id.is_empty() => {
                    return self.replace_static_member(&holder, &instance, req, now, reply);
                }
                _ => {}
            }
        }
        let member_id = if req.member_id.is_empty() {
            let id = self.new_member_id(&req.client_id);
            if req.require_known_member_id && req.instance_id.is_none() {
                self.pending_ids
                    .insert(id.clone(), now + req.session_timeout);
                return fail(reply, ResponseError::MemberIdRequired, id);
            }
            id
        } else if self.members.contains_key(&req.member_id)
            || self.pending_ids.remove(&req.member_id).is_some()
        {
            req.member_id.clone()
        } else {
            return fail(reply, ResponseError::UnknownMemberId, req.member_id);
        };
        if self.state == State::CompletingRebalance || self.state == State::Stable {
            self.fail_pending_syncs();
        }
        self.members
            .entry(member_id.clone())
            .or_insert_with(|| Member {
                id: member_id.clone(),
                instance_id: req.instance_id.clone(),
                client_id: req.client_id.clone(),
                client_host: req.client_host.clone(),
                session_timeout: req.session_timeout,
                rebalance_timeout: req.rebalance_timeout,
                protocols: Vec::new(),
                assignment: Bytes::new(),
                last_heard: now,
                pending_join: None,
                pending_sync: None,
            });
        if let Some(instance) = &req.instance_id {
            self.instances.insert(instance.clone(), member_id.clone());
        }
        let member = self.members.get_mut(&member_id).expect("inserted above");
        member.protocols = req.protocols;
        member.session_timeout = req.session_timeout;
        member.rebalance_timeout = req.rebalance_timeout;
        member.last_heard = now;
        if let Some(earlier) = member.pending_join.replace(reply) {
            // A retried JoinGroup: the earlier request still gets its answer.
            let _ = earlier.send(JoinResult {
                error: code(ResponseError::RebalanceInProgress),
                generation: -1,
                ..Default::default()
            });
        }
        self.protocol_type = Some(req.protocol_type);
        if self.state != State::PreparingRebalance {
            self.prepare_rebalance(now);
        }
        self.maybe_complete_join(now);
    }

    /// Every member with its metadata for the chosen protocol: what the leader assigns from.
    fn roster(&self) -> Vec<(String, Option<String>, Bytes)> {
        let protocol = self.protocol.clone().unwrap_or_default();
        self.members
            .values()
            .map(|m| (m.id.clone(), m.instance_id.clone(), m.metadata(&protocol)))
            .collect()
    }

    fn all_support(&self, protocol: &str) -> bool {
        self.members
            .values()
            .all(|m| m.protocols.iter().any(|(p, _)| p == protocol))
    }

    fn prepare_rebalance(&mut self, now: Instant) {
        let longest = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        let wait = if self.state == State::Empty {
            self.initial_delay.min(longest)
        } else {
            longest
        };
        self.state = State::PreparingRebalance;
        self.deadline = Some(now + wait);
        self.fail_pending_syncs();
    }

    fn fail_pending_syncs(&mut self) {
        for member in self.members.values_mut() {
            if let Some(reply) = member.pending_sync.take() {
                let _ = reply.send(SyncResult {
                    error: code(ResponseError::RebalanceInProgress),
                    ..Default::default()
                });
            }
        }
    }

    /// Completes the join phase once every member rejoined (after the initial delay of a new
    /// group) or the rebalance deadline passed; members that did not rejoin are dropped.
    fn maybe_complete_join(&mut self, now: Instant) {
        if self.state != State::PreparingRebalance {
            return;
        }
        let deadline = self.deadline.unwrap_or(now);
        let everyone = self.members.values().all(|m| m.pending_join.is_some());
        let initial = self.generation == 0 || self.leader.is_none();
        if !(now >= deadline || (everyone && !initial)) {
            return;
        }
        self.remove_members(|m| m.pending_join.is_none());
        if self.members.is_empty() {
            self.become_empty();
            return;
        }
        self.generation += 1;
        self.protocol = self.choose_protocol();
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.state = State::CompletingRebalance;
        self.deadline = Some(
            now + self
                .members
                .values()
                .map(|m| m.rebalance_timeout)
                .max()
                .unwrap_or_default(),
        );
        let leader = self.leader.clone().unwrap_or_default();
        let roster = self.roster();
        for member in self.members.values_mut() {
            member.last_heard = now;
            member.assignment = Bytes::new();
            if let Some(reply) = member.pending_join.take() {
                let _ = reply.send(JoinResult {
                    error: 0,
                    generation: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol: self.protocol.clone(),
                    leader: leader.clone(),
                    member_id: member.id.clone(),
                    members: if member.id == leader {
                        roster.clone()
                    } else {
                        Vec::new()
                    },
                });
            }
        }
    }

    /// The protocol every member supports that the most members list first (the first
    /// member's order breaks ties).
    fn choose_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(p, _)| p)
            .filter(|p| self.all_support(p))
            .collect();
        candidates
            .iter()
            .max_by_key(|p| {
                let votes = self
                    .members
                    .values()
                    .filter(|m| {
                        m.protocols
                            .iter()
                            .find(|(q, _)| candidates.contains(&q))
                            .is_some_and(|(q, _)| q == **p)
                    })
                    .count();
                (
                    votes,
                    std::cmp::Reverse(first.protocols.iter().position(|(q, _)| q == **p)),
                )
            })
            .map(|p| (*p).clone())
    }

    fn become_empty(&mut self) {
        self.state = State::Empty;
        self.empty_since_ms = crate::now_ms();
        self.leader = None;
        self.protocol = None;
        self.deadline = None;
    }

    /// Handles a SyncGroup; the leader's assignment completes the rebalance for everyone.
    pub fn sync(
        &mut self,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
        reply: oneshot::Sender<SyncResult>,
    ) {
        let fail = |reply: oneshot::Sender<SyncResult>, error: ResponseError| {
            let _ = reply.send(SyncResult {
                error: code(error),
                ..Default::default()
            });
        };
        let Some(member) = self.members.get_mut(member_id) else {
            return fail(reply, ResponseError::UnknownMemberId);
        };
        if generation != self.generation {
            return fail(reply, ResponseError::IllegalGeneration);
        }
        member.last_heard = now;
        match self.state {
            State::Empty | State::PreparingRebalance => {
                fail(reply, ResponseError::RebalanceInProgress)
            }
            State::Stable => {
                let _ = reply.send(self.sync_result(member_id));
            }
            State::CompletingRebalance => {
                if let Some(earlier) = member.pending_sync.replace(reply) {
                    let _ = earlier.send(SyncResult {
                        error: code(ResponseError::RebalanceInProgress),
                        ..Default::default()
                    });
                }
                if self.leader.as_deref() == Some(member_id) {
                    let mut given: HashMap<String, Bytes> = assignments.into_iter().collect();
                    for member in self.members.values_mut() {
                        member.assignment = given.remove(&member.id).unwrap_or_default();
                    }
                    self.state = State::Stable;
                    self.deadline = None;
                    let ids: Vec<String> = self.members.keys().cloned().collect();
                    for id in ids {
                        let result = self.sync_result(&id);
                        if let Some(reply) = self
                            .members
                            .get_mut(&id)
                            .and_then(|m| m.pending_sync.take())
                        {
                            let _ = reply.send(result);
                        }
                    }
                }
            }
        }
    }

    fn sync_result(&self, member_id: &str) -> SyncResult {
        SyncResult {
            error: 0,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            assignment: self
                .members
                .get(member_id)
                .map(|m| m.assignment.clone())
                .unwrap_or_default(),
        }
    }

    /// A heartbeat's error code (0 while all is well; REBALANCE_IN_PROGRESS asks it to rejoin).
    pub fn heartbeat(&mut self, member_id: &str, generation: i32, now: Instant) -> i16 {
        let Some(member) = self.members.get_mut(member_id) else {
            return code(ResponseError::UnknownMemberId);
        };
        member.last_heard = now;
        if self.state == State::PreparingRebalance {
            return code(ResponseError::RebalanceInProgress);
        }
        if generation != self.generation {
            return code(ResponseError::IllegalGeneration);
        }
        0
    }

    /// Removes a member that left; the rest rebalance.
    pub fn leave(&mut self, member_id: &str, now: Instant) -> i16 {
        let Some(member) = self.members.remove(member_id) else {
            return code(ResponseError::UnknownMemberId);
        };
        self.drop_member(member);
        self.after_removal(now);
        0
    }

    /// Removes (and answers, see `drop_member`) every member `doomed` picks; returns their ids.
    fn remove_members(&mut self, doomed: impl Fn(&Member) -> bool) -> Vec<String> {
        let ids: Vec<String> = self
            .members
            .values()
            .filter(|m| doomed(m))
            .map(|m| m.id.clone())
            .collect();
        for id in &ids {
            if let Some(member) = self.members.remove(id) {
                self.drop_member(member);
            }
        }
        ids
    }

    /// Forgets a removed member, answering whatever it still waits for: no request goes
    /// unanswered (a missing answer would shift every later reply on its connection).
    fn drop_member(&mut self, member: Member) {
        self.forget_instance(&member);
        let gone = code(ResponseError::UnknownMemberId);
        if let Some(reply) = member.pending_join {
            let _ = reply.send(JoinResult {
                error: gone,
                generation: -1,
                ..Default::default()
            });
        }
        if let Some(reply) = member.pending_sync {
            let _ = reply.send(SyncResult {
                error: gone,
                ..Default::default()
            });
        }
    }

    fn after_removal(&mut self, now: Instant) {
        if self.members.is_empty() {
            self.fail_pending_syncs();
            self.become_empty();
        } else if self.state == State::PreparingRebalance {
            self.maybe_complete_join(now);
        } else {
            self.prepare_rebalance(now);
        }
    }

    /// Expires silent members and stale handed-out ids, completes due rebalances.
    pub fn tick(&mut self, now: Instant) {
        self.pending_ids.retain(|_, until| *until > now);
        // Members waiting in JoinGroup or SyncGroup are alive; the rebalance deadlines handle
        // those whose rebalance stalls.
        let expired = self.remove_members(|m| {
            m.pending_join.is_none()
                && m.pending_sync.is_none()
                && now.duration_since(m.last_heard) > m.session_timeout
        });
        for id in &expired {
            tracing::info!(group = %self.id, member = %id, "member's session expired");
        }
        if !expired.is_empty() {
            self.after_removal(now);
        }
        if self.state == State::CompletingRebalance && self.deadline.is_some_and(|d| now >= d) {
            // The leader never sent the assignment: start over without those who did not sync.
            self.remove_members(|m| m.pending_sync.is_none());
            self.after_removal(now);
        }
        self.maybe_complete_join(now);
    }
}
