use super::*;

fn request(member: &str) -> JoinRequest {
    JoinRequest {
        member_id: member.to_owned(),
        instance_id: None,
        client_id: "c".into(),
        client_host: "/127.0.0.1".into(),
        session_timeout: Duration::from_secs(10),
        rebalance_timeout: Duration::from_secs(30),
        protocol_type: "consumer".into(),
        protocols: vec![
            ("range".into(), Bytes::from_static(b"m")),
            ("roundrobin".into(), Bytes::new()),
        ],
        require_known_member_id: true,
    }
}

fn join(g: &mut Group, member: &str, now: Instant) -> oneshot::Receiver<JoinResult> {
    let (tx, rx) = oneshot::channel();
    g.join(request(member), now, tx);
    rx
}

#[test]
fn two_members_rebalance_and_sync() {
    let t0 = Instant::now();
    let mut g = Group::new("g", Duration::from_millis(100));
    let first = join(&mut g, "", t0).try_recv().unwrap();
    assert_eq!(first.error, ResponseError::MemberIdRequired.code());
    let a = first.member_id;
    let mut ja = join(&mut g, &a, t0);
    let second = join(&mut g, "", t0).try_recv().unwrap();
    let b = second.member_id;
    let mut jb = join(&mut g, &b, t0);
    assert!(ja.try_recv().is_err(), "waits for the initial delay");
    g.tick(t0 + Duration::from_millis(150));
    let (ra, rb) = (ja.try_recv().unwrap(), jb.try_recv().unwrap());
    assert_eq!((ra.generation, rb.generation), (1, 1));
    assert_eq!(ra.protocol.as_deref(), Some("range"));
    let (leader, follower) = if ra.leader == a { (ra, rb) } else { (rb, ra) };
    assert_eq!(leader.members.len(), 2);
    assert!(follower.members.is_empty());
    let (ftx, mut frx) = oneshot::channel();
    g.sync(&follower.member_id, 1, vec![], t0, ftx);
    assert!(frx.try_recv().is_err(), "waits for the leader");
    let (ltx, mut lrx) = oneshot::channel();
    let plan = vec![
        (leader.member_id.clone(), Bytes::from_static(b"p0")),
        (follower.member_id.clone(), Bytes::from_static(b"p1")),
    ];
    g.sync(&leader.member_id, 1, plan, t0, ltx);
    assert_eq!(
        lrx.try_recv().unwrap().assignment,
        Bytes::from_static(b"p0")
    );
    assert_eq!(
        frx.try_recv().unwrap().assignment,
        Bytes::from_static(b"p1")
    );
    assert_eq!(g.state, State::Stable);
    assert_eq!(g.heartbeat(&a, 1, t0), 0);
}

#[test]
fn silent_member_expires_and_the_rest_rebalance() {
    let t0 = Instant::now();
    let mut g = Group::new("g", Duration::ZERO);
    let a = join(&mut g, "", t0).try_recv().unwrap().member_id;
    let mut ja = join(&mut g, &a, t0);
    g.tick(t0);
    assert_eq!(ja.try_recv().unwrap().generation, 1);
    let (tx, _rx) = oneshot::channel();
    g.sync(&a, 1, vec![(a.clone(), Bytes::new())], t0, tx);
    let b = join(&mut g, "", t0).try_recv().unwrap().member_id;
    let _jb = join(&mut g, &b, t0);
    assert_eq!(
        g.heartbeat(&a, 1, t0),
        ResponseError::RebalanceInProgress.code()
    );
    let mut ja = join(&mut g, &a, t0);
    let r = ja.try_recv().unwrap();
    assert_eq!(r.generation, 2);
    // b goes silent after the rebalance: its session expires, a is asked to rejoin.
    assert_eq!(g.heartbeat(&a, 2, t0 + Duration::from_secs(6)), 0);
    g.tick(t0 + Duration::from_secs(11));
    assert!(!g.members.contains_key(&b));
    assert_eq!(g.state, State::PreparingRebalance);
    assert_eq!(
        g.heartbeat(&a, 2, t0 + Duration::from_secs(11)),
        ResponseError::RebalanceInProgress.code()
    );
}

#[test]
fn restarted_static_member_takes_over_without_a_rebalance() {
    let t0 = Instant::now();
    let mut g = Group::new("g", Duration::ZERO);
    let static_join = |g: &mut Group, member: &str| {
        let (tx, rx) = oneshot::channel();
        let mut req = request(member);
        req.instance_id = Some("host-1".into());
        g.join(req, t0, tx);
        rx
    };
    let mut first = static_join(&mut g, "");
    g.tick(t0);
    let first = first.try_recv().unwrap();
    assert_eq!(first.error, 0, "static members skip MEMBER_ID_REQUIRED");
    let (tx, _rx) = oneshot::channel();
    g.sync(
        &first.member_id,
        1,
        vec![(first.member_id.clone(), Bytes::from_static(b"all"))],
        t0,
        tx,
    );
    assert_eq!(g.state, State::Stable);
    // The process restarts: same instance id, no member id.
    let second = static_join(&mut g, "").try_recv().unwrap();
    assert_eq!(
        (second.error, second.generation),
        (0, 1),
        "same generation: no rebalance"
    );
    assert_ne!(second.member_id, first.member_id);
    assert_eq!(g.state, State::Stable);
    // It was the leader: it is told so and given the roster, as a leader must be (librdkafka
    // crashes assigning to an empty roster).
    assert_eq!(second.leader, second.member_id);
    let roster: Vec<&str> = second.members.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(roster, vec![second.member_id.as_str()]);
    let (tx, mut rx) = oneshot::channel();
    g.sync(
        &second.member_id,
        1,
        vec![(second.member_id.clone(), Bytes::from_static(b"new"))],
        t0,
        tx,
    );
    assert_eq!(
        rx.try_recv().unwrap().assignment,
        Bytes::from_static(b"all")
    );
    // The old process, if still alive, is fenced.
    assert_eq!(
        g.fenced(&first.member_id, Some("host-1")),
        Some(ResponseError::FencedInstanceId.code())
    );
    assert_eq!(g.fenced(&second.member_id, Some("host-1")), None);
    assert_eq!(
        static_join(&mut g, &first.member_id)
            .try_recv()
            .unwrap()
            .error,
        ResponseError::FencedInstanceId.code()
    );
}

#[test]
fn leave_of_last_member_empties_the_group() {
    let t0 = Instant::now();
    let mut g = Group::new("g", Duration::ZERO);
    let a = join(&mut g, "", t0).try_recv().unwrap().member_id;
    let _joined = join(&mut g, &a, t0);
    g.tick(t0);
    assert_eq!(g.leave(&a, t0), 0);
    assert_eq!(g.state, State::Empty);
    assert_eq!(g.leave(&a, t0), ResponseError::UnknownMemberId.code());
}

#[test]
fn unknown_member_and_wrong_generation_are_refused() {
    let t0 = Instant::now();
    let mut g = Group::new("g", Duration::ZERO);
    assert_eq!(
        join(&mut g, "stranger", t0).try_recv().unwrap().error,
        ResponseError::UnknownMemberId.code()
    );
    let a = join(&mut g, "", t0).try_recv().unwrap().member_id;
    let _joined = join(&mut g, &a, t0);
    g.tick(t0);
    let (tx, mut rx) = oneshot::channel();
    g.sync(&a, 7, vec![], t0, tx);
    assert_eq!(
        rx.try_recv().unwrap().error,
        ResponseError::IllegalGeneration.code()
    );
}

/// An admin removes a static member by its instance id alone (LeaveGroup v3+ with no member
/// id); a member id that is not the instance's holder is fenced, an unknown instance refused.
#[test]
fn a_static_member_leaves_by_its_instance_id() {
    let t0 = Instant::now();
    let mut g = Group::new("g", Duration::ZERO);
    let (tx, mut rx) = oneshot::channel();
    let mut req = request("");
    req.instance_id = Some("host-1".into());
    g.join(req, t0, tx);
    g.tick(t0);
    let member = rx.try_recv().unwrap().member_id;
    assert_eq!(
        g.leave_member("someone-else", Some("host-1"), t0),
        ResponseError::FencedInstanceId.code()
    );
    assert_eq!(
        g.leave_member("", Some("host-2"), t0),
        ResponseError::UnknownMemberId.code()
    );
    assert!(g.members.contains_key(&member));
    assert_eq!(g.leave_member("", Some("host-1"), t0), 0);
    assert!(g.members.is_empty());
    assert_eq!(
        g.fenced(&member, Some("host-1")),
        None,
        "the instance is free"
    );
}
