//! The agent's end of the plugin's socket.
//!
//! Connections are read on their own tasks; each request goes to the agent's
//! loop, the one owner of enrollment, and its answer comes back on a oneshot.
//! A pod the agent cannot decide on yet (its Pod object not seen yet) waits in
//! [`Pending`] until configuration shows it or its deadline passes.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
    sync::{mpsc, oneshot},
};
use tracing::{debug, info, warn};

use super::wire::{Answer, Request};
use crate::{
    distribution::{self, SocketError},
    enrollment::{Admission, SandboxReport},
};

/// A request longer than this is not the plugin's.
const MAX_REQUEST: u64 = 64 * 1024;
/// The plugin writes its request at once; a connection that does not is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One request from the plugin, and where its answer goes.
#[derive(Debug)]
pub struct Call {
    pub request: Request,
    pub answer: oneshot::Sender<Answer>,
}

/// Listens on `path` (root only) and hands every request to the returned channel.
pub async fn serve(path: &Path) -> Result<mpsc::Receiver<Call>, SocketError> {
    let listener = distribution::bind(path).await?;
    let (calls, received) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(handle(stream, calls.clone()));
                }
                Err(error) => {
                    warn!(%error, "accepting a CNI plugin connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(received)
}

async fn handle(stream: UnixStream, calls: mpsc::Sender<Call>) {
    // The socket is root's alone; the check keeps it so if its mode is ever widened.
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == 0 => {}
        Ok(cred) => {
            warn!(
                uid = cred.uid(),
                "CNI socket: a caller that is not root; closing"
            );
            return;
        }
        Err(error) => {
            warn!(%error, "CNI socket: cannot tell who calls; closing");
            return;
        }
    }
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    let read = tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
    let answer = match read {
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Ok(request) => {
                let (answer, answered) = oneshot::channel();
                if calls.send(Call { request, answer }).await.is_err() {
                    return;
                }
                // A plugin that gave up (the runtime killed it) closes its end: the
                // call is then dropped, not decided for nobody.
                let mut rest = [0; 1];
                tokio::select! {
                    answer = answered => match answer {
                        Ok(answer) => answer,
                        // The agent is stopping: the plugin reports it unreachable.
                        Err(_) => return,
                    },
                    _ = reader.read(&mut rest) => return,
                }
            }
            Err(error) => Answer::Refused {
                why: format!("cannot decode the request: {error}"),
            },
        },
        Err(error) => {
            debug!(%error, "reading a CNI plugin request");
            return;
        }
    };
    let Ok(mut out) = serde_json::to_vec(&answer) else {
        return;
    };
    out.push(b'\n');
    if let Err(error) = write.write_all(&out).await {
        debug!(%error, "answering the CNI plugin");
    }
}

/// ADD requests not decided yet, each with its deadline.
#[derive(Debug, Default)]
pub struct Pending {
    waiting: Vec<Waiting>,
}

#[derive(Debug)]
struct Waiting {
    report: SandboxReport,
    answer: oneshot::Sender<Answer>,
    deadline: Instant,
}

/// Answers decided, sent once the agent has published what they depend on.
#[must_use = "answers are sent with `send`"]
#[derive(Debug, Default)]
pub struct Answers {
    ready: Vec<(oneshot::Sender<Answer>, Answer)>,
}

impl Answers {
    /// Whether any call was decided (each decision reconciled enrollment).
    pub fn any(&self) -> bool {
        !self.ready.is_empty()
    }

    pub fn send(self) {
        for (to, answer) in self.ready {
            // The plugin gave up waiting: its runtime retries with a new call.
            let _ = to.send(answer);
        }
    }
}

impl Pending {
    /// Queues an ADD for a pod, to be decided by [`Pending::settle`] within `wait`.
    pub fn add(&mut self, report: SandboxReport, answer: oneshot::Sender<Answer>, wait: Duration) {
        self.waiting.push(Waiting {
            report,
            answer,
            deadline: Instant::now() + wait,
        });
    }

    /// Decides what can be decided now, all calls in one `admit`; a pod still
    /// undecided at its deadline is refused with the reason it waited for.
    pub fn settle(&mut self, admit: impl FnOnce(&[&SandboxReport]) -> Vec<Admission>) -> Answers {
        let mut answers = Answers::default();
        let now = Instant::now();
        // Calls whose plugin is gone are not decided.
        self.waiting.retain(|w| !w.answer.is_closed());
        if self.waiting.is_empty() {
            return answers;
        }
        let reports: Vec<&SandboxReport> = self.waiting.iter().map(|w| &w.report).collect();
        let admissions = admit(&reports);
        let mut still = Vec::new();
        for (waiting, admission) in self.waiting.drain(..).zip(admissions) {
            let pod = waiting.report.pod();
            let answer = match admission {
                Admission::Enrolled { mode } => {
                    info!(%pod, ?mode, netns = %waiting.report.netns.display(), "captured as its sandbox was built (CNI)");
                    Answer::Enrolled {
                        mode: mode.name().to_owned(),
                    }
                }
                Admission::Outside(why) => {
                    debug!(%pod, %why, "not for the mesh (CNI)");
                    Answer::Outside { why }
                }
                Admission::Failed(why) => {
                    warn!(%pod, %why, "refused to start: in the mesh but not captured (CNI)");
                    Answer::Refused { why }
                }
                Admission::NotYet(why) if now >= waiting.deadline => {
                    warn!(%pod, %why, "refused to start: undecided at the deadline (CNI)");
                    Answer::Refused {
                        why: format!("{why} (the runtime will try again)"),
                    }
                }
                Admission::NotYet(why) => {
                    debug!(%pod, %why, "waiting (CNI)");
                    still.push(waiting);
                    continue;
                }
            };
            answers.ready.push((waiting.answer, answer));
        }
        self.waiting = still;
        answers
    }

    /// Drops the calls for a sandbox the runtime tears down (a DEL for it).
    pub fn cancel(&mut self, container_id: &str) {
        self.waiting
            .retain(|w| w.report.container_id != container_id);
    }

    /// When the earliest waiting request times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.waiting.iter().map(|w| w.deadline).min()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// The report an ADD carries.
pub fn report_of(request: &Request) -> Option<SandboxReport> {
    match request {
        Request::Add {
            pod,
            container_id,
            netns,
            addresses,
        } => Some(SandboxReport {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            container_id: container_id.clone(),
            netns: netns.clone(),
            addresses: addresses.clone(),
        }),
        Request::Del { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use warren_ebpf_common::Mode;

    use super::*;

    fn report(name: &str) -> SandboxReport {
        SandboxReport {
            namespace: "shop".into(),
            name: name.into(),
            uid: None,
            container_id: format!("sandbox-{name}"),
            netns: "/var/run/netns/cni-1".into(),
            addresses: vec!["10.244.0.7".parse().unwrap()],
        }
    }

    #[test]
    fn a_pod_waits_until_it_is_decided_or_its_deadline_passes() {
        let mut pending = Pending::default();
        let (to_web, mut web) = oneshot::channel();
        let (to_late, mut late) = oneshot::channel();
        pending.add(report("web"), to_web, Duration::from_secs(60));
        pending.add(report("late"), to_late, Duration::ZERO);
        // Neither Pod object seen yet: the one past its deadline is refused, saying why.
        let answers = pending.settle(|reports| {
            reports
                .iter()
                .map(|r| Admission::NotYet(format!("pod shop/{} not seen", r.name)))
                .collect()
        });
        assert!(answers.any(), "late's refusal");
        answers.send();
        match late.try_recv() {
            Ok(Answer::Refused { why }) => assert!(why.contains("shop/late not seen"), "{why}"),
            other => panic!("late: {other:?}"),
        }
        assert!(web.try_recv().is_err(), "web is still waiting");
        assert!(!pending.is_empty());
        assert!(pending.next_deadline().is_some());

        let answers = pending.settle(|reports| {
            assert_eq!(reports.len(), 1, "decided together");
            vec![Admission::Enrolled { mode: Mode::Strict }]
        });
        assert!(answers.any());
        // Nothing is sent before the agent says so (after publishing the view).
        assert!(web.try_recv().is_err());
        answers.send();
        assert_eq!(
            web.try_recv().unwrap(),
            Answer::Enrolled {
                mode: "STRICT".into()
            }
        );
        assert!(pending.is_empty());
        assert_eq!(pending.next_deadline(), None);
    }

    /// The socket end to end: a request reaches the agent's loop and its answer the
    /// plugin; a request that is not JSON is answered with why.
    #[tokio::test]
    async fn requests_reach_the_loop_and_garbage_is_answered() {
        use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cni.sock");
        let mut calls = serve(&path).await.unwrap();
        let ask = |line: &'static str| {
            let path = path.clone();
            async move {
                let mut stream = UnixStream::connect(&path).await.unwrap();
                stream.write_all(line.as_bytes()).await.unwrap();
                let mut answer = String::new();
                BufReader::new(stream).read_line(&mut answer).await.unwrap();
                serde_json::from_str::<Answer>(&answer).unwrap()
            }
        };
        let plugin = tokio::spawn(ask(
            "{\"command\":\"del\",\"pod\":{\"namespace\":\"shop\",\"name\":\"web\"},\"container_id\":\"c1\"}\n",
        ));
        let call = calls.recv().await.unwrap();
        assert!(matches!(&call.request, Request::Del { container_id, .. } if container_id == "c1"));
        call.answer.send(Answer::Done).unwrap();
        assert_eq!(plugin.await.unwrap(), Answer::Done);

        match ask("not json\n").await {
            Answer::Refused { why } => assert!(why.contains("cannot decode"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
