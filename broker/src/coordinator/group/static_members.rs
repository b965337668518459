//! Static membership (KIP-345): a member named by `group.instance.id` keeps its place across
//! restarts; a restarted process replaces the old member id instead of joining anew.

use std::time::Instant;

use kafka_protocol::ResponseError;
use tokio::sync::oneshot;

use super::{code, Group, JoinRequest, JoinResult, Member, State, SyncResult};

impl Group {
    /// A static member restarted (same group.instance.id, no member id): the new process takes
    /// the old one's place. In a stable group with unchanged protocols it keeps the assignment and
    /// the generation, so nobody rebalances; otherwise the group rebalances as for a new member.
    pub(super) fn replace_static_member(
        &mut self,
        old_id: &str,
        instance: &str,
        req: JoinRequest,
        now: Instant,
        reply: oneshot::Sender<JoinResult>,
    ) {
        let new_id = self.new_member_id(&req.client_id);
        let Some(mut member) = self.members.remove(old_id) else {
            self.instances.remove(instance);
            let req = JoinRequest {
                instance_id: Some(instance.to_owned()),
                ..req
            };
            return self.join(req, now, reply);
        };
        let fenced = code(ResponseError::FencedInstanceId);
        if let Some(old) = member.pending_join.take() {
            let _ = old.send(JoinResult {
                error: fenced,
                generation: -1,
                ..Default::default()
            });
        }
        if let Some(old) = member.pending_sync.take() {
            let _ = old.send(SyncResult {
                error: fenced,
                ..Default::default()
            });
        }
        let unchanged = member.protocols == req.protocols;
        let was_leader = self.leader.as_deref() == Some(old_id);
        member.id = new_id.clone();
        member.client_id = req.client_id.clone();
        member.client_host = req.client_host.clone();
        member.session_timeout = req.session_timeout;
        member.rebalance_timeout = req.rebalance_timeout;
        member.protocols = req.protocols;
        member.last_heard = now;
        if was_leader {
            self.leader = Some(new_id.clone());
        }
        self.members.insert(new_id.clone(), member);
        self.instances.insert(instance.to_owned(), new_id.clone());
        if self.state == State::Stable && unchanged {
            // A leader (JoinGroup before v9 cannot be told to skip assignment) gets the roster
            // and computes an assignment; in a stable group SyncGroup keeps the current one.
            let members = if was_leader {
                self.roster()
            } else {
                Vec::new()
            };
            let _ = reply.send(JoinResult {
                error: 0,
                generation: self.generation,
                protocol_type: self.protocol_type.clone(),
                protocol: self.protocol.clone(),
                leader: self.leader.clone().unwrap_or_default(),
                member_id: new_id,
                members,
            });
            return;
        }
        self.members
            .get_mut(&new_id)
            .expect("just inserted")
            .pending_join = Some(reply);
        if self.state != State::PreparingRebalance {
            self.prepare_rebalance(now);
        }
        self.maybe_complete_join(now);
    }

    /// FENCED_INSTANCE_ID when `instance` is now held by another member id.
    pub fn fenced(&self, member_id: &str, instance: Option<&str>) -> Option<i16> {
        let holder = self.instances.get(instance?)?;
        (holder != member_id).then(|| code(ResponseError::FencedInstanceId))
    }

    pub(super) fn forget_instance(&mut self, member: &Member) {
        if let Some(instance) = &member.instance_id {
            if self.instances.get(instance) == Some(&member.id) {
                self.instances.remove(instance);
            }
        }
    }

    /// LeaveGroup v3 and later: a member named by its id, by its `group.instance.id` alone (an
    /// admin removing a static member knows no id), or by both, which must then agree.
    pub fn leave_member(&mut self, member_id: &str, instance: Option<&str>, now: Instant) -> i16 {
        let Some(instance) = instance else {
            return self.leave(member_id, now);
        };
        match self.instances.get(instance) {
            Some(holder) if member_id.is_empty() || holder == member_id => {
                let holder = holder.clone();
                self.leave(&holder, now)
            }
            Some(_) => code(ResponseError::FencedInstanceId),
            None => code(ResponseError::UnknownMemberId),
        }
    }
}
