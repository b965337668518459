//! What is known of a container by its id: Docker's record (`DockerContainers`: name, image and
//! labels, from `<root>/containers/<id>/config.v2.json`), or the kubelet's log links
//! (`KubeletLinks`: pod, namespace and container name) for containerd and CRI-O, which keep no
//! record a reader can use.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerInfo {
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
}

/// Container metadata by id, read again when Docker rewrites the record (`docker rename`, or a
/// record written after the container's first log lines) and forgotten when it goes away.
pub struct DockerContainers {
    root: PathBuf,
    known: HashMap<String, (Written, Arc<ContainerInfo>)>,
    /// The containers whose broken record was said in the log, and how it was written then.
    said: HashMap<String, Option<Written>>,
}

/// Which file a container's record was, when it was written and how long it was when it was
/// read: a new one is read again (Docker replaces the file whole, so a new inode).
type Written = (u64, std::time::SystemTime, u64);

/// The part of `config.v2.json` the agent uses.
#[derive(Deserialize)]
struct ConfigV2 {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Config", default)]
    config: ConfigPart,
}

#[derive(Deserialize, Default)]
struct ConfigPart {
    #[serde(rename = "Image", default)]
    image: String,
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
}

/// Docker writes the file whole, but it may be larger than a container is worth reading.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

impl DockerContainers {
    pub fn new(root: &str) -> Self {
        Self {
            root: PathBuf::from(root),
            known: HashMap::new(),
            said: HashMap::new(),
        }
    }

    /// The container's metadata, or `None` when Docker has no record of it; looked for again
    /// next time (a stat, then the file only when it changed). What was read last stays while
    /// the record cannot be read (`docker rm` removes it before the log, say). `docker`: the
    /// container is known to be Docker's (its log is in Docker's root), so a record never read
    /// is said in the log; a record that cannot be read always is, once each time it is written.
    pub fn get(&mut self, id: &str, docker: bool) -> Option<Arc<ContainerInfo>> {
        use std::os::unix::fs::MetadataExt;
        let path = self.root.join("containers").join(id).join("config.v2.json");
        let held = self.known.get(id).map(|(_, info)| info.clone());
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) => {
                if docker && held.is_none() {
                    self.say(id, None, &path, &e.to_string(), None);
                }
                return held;
            }
        };
        let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
        let written = (meta.ino(), modified, meta.len());
        match self.known.get(id) {
            Some((read, info)) if *read == written => return Some(info.clone()),
            _ => {}
        }
        let read = match meta.len() {
            size if size > MAX_CONFIG_BYTES => Err(format!(
                "{size} bytes, more than the {MAX_CONFIG_BYTES} read"
            )),
            _ => std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    serde_json::from_slice::<ConfigV2>(&bytes).map_err(|e| e.to_string())
                }),
        };
        let config = match read {
            Ok(config) => config,
            Err(e) => {
                self.say(id, Some(written), &path, &e, held.as_deref());
                return held;
            }
        };
        self.said.remove(id);
        let info = Arc::new(ContainerInfo {
            name: config.name.trim_start_matches('/').to_owned(),
            image: config.config.image,
            labels: config.config.labels.unwrap_or_default(),
        });
        self.known.insert(id.to_owned(), (written, info.clone()));
        Some(info)
    }

    /// Says once (for each way the record is written) that a container's record cannot be
    /// read, and what names it meanwhile: what was read of it before (`held`), or its id.
    fn say(
        &mut self,
        id: &str,
        written: Option<Written>,
        path: &Path,
        error: &str,
        held: Option<&ContainerInfo>,
    ) {
        if self.said.get(id) == Some(&written) {
            return;
        }
        self.said.insert(id.to_owned(), written);
        let meanwhile = match held {
            Some(info) => format!("it keeps what was read of it before (name {})", info.name),
            None => "it is named by its id, without image or labels, until the record can be \
                     read"
                .to_owned(),
        };
        tracing::warn!(
            container = id,
            record = %path.display(),
            error,
            "agent: Docker's record of the container cannot be read: {meanwhile}"
        );
    }

    /// Forgets the containers not in `alive`.
    pub fn retain(&mut self, alive: &std::collections::HashSet<String>) {
        self.known.retain(|id, _| alive.contains(id));
        self.said.retain(|id, _| alive.contains(id));
    }
}

/// A Kubernetes container, as its kubelet log link names it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodContainer {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// The kubelet's links, one per container: `<dir>/<pod>_<namespace>_<container>-<id>.log`
/// (pod, namespace and container names cannot hold `_`).
pub struct KubeletLinks {
    dir: PathBuf,
    known: HashMap<String, Arc<PodContainer>>,
}

/// Links read at most, so a huge directory cannot stall the agent.
const MAX_LINKS: usize = 20_000;

impl KubeletLinks {
    pub fn new(dir: &str) -> Self {
        Self {
            dir: PathBuf::from(dir),
            known: HashMap::new(),
        }
    }

    /// Reads the links again: the containers started since, and only those still there. A
    /// directory that cannot be read (not a Kubernetes node) knows none.
    pub fn refresh(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            self.known.clear();
            return;
        };
        self.known = entries
            .flatten()
            .take(MAX_LINKS)
            .filter_map(|entry| parse_link(&entry.file_name().to_string_lossy()))
            .map(|(id, container)| (id, Arc::new(container)))
            .collect();
    }

    pub fn get(&self, id: &str) -> Option<Arc<PodContainer>> {
        self.known.get(id).cloned()
    }

    /// The id of the container whose link points at `log` (a file under `/var/log/pods`),
    /// reading the links again; `None` where no link does (not a Kubernetes node, or the
    /// container's log has since moved on to its next restart).
    pub fn id_of_log(&mut self, pod: &PodContainer, log: &Path) -> Option<String> {
        self.refresh();
        // The link's target is the node's path; the agent may see the logs elsewhere (a pod
        // with the node's /var/log mounted under /host): the last three parts, the pod's
        // directory, the container's and the file, are what must match.
        let tail = |path: &Path| -> Vec<std::ffi::OsString> {
            let parts: Vec<_> = path
                .components()
                .map(|c| c.as_os_str().to_owned())
                .collect();
            parts[parts.len().saturating_sub(3)..].to_vec()
        };
        let target = tail(log);
        self.known
            .iter()
            .filter(|(_, known)| known.as_ref() == pod)
            .find(|(id, _)| {
                let link = self.dir.join(format!(
                    "{}_{}_{}-{id}.log",
                    pod.pod, pod.namespace, pod.container
                ));
                std::fs::read_link(link).is_ok_and(|linked| tail(&linked) == target)
            })
            .map(|(id, _)| id.clone())
    }
}

/// (container id, names) of `<pod>_<namespace>_<container>-<id>.log`.
fn parse_link(name: &str) -> Option<(String, PodContainer)> {
    let (names, id) = name.strip_suffix(".log")?.rsplit_once('-')?;
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut parts = names.split('_');
    let (pod, namespace, container) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || [pod, namespace, container].contains(&"") {
        return None;
    }
    let container = PodContainer {
        namespace: namespace.to_owned(),
        pod: pod.to_owned(),
        container: container.to_owned(),
    };
    Some((id.to_owned(), container))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_links_name_pod_namespace_and_container() {
        let dir = tempfile::tempdir().unwrap();
        let id = "9f".repeat(32);
        for name in [
            format!("web-5d8f7_shop_app-{id}.log"),
            format!("too_many_parts_here-{}.log", "a".repeat(64)),
            format!("web_shop_app-{}.log", "short"),
            "unrelated.txt".to_owned(),
        ] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let mut links = KubeletLinks::new(dir.path().to_str().unwrap());
        assert!(links.get(&id).is_none());
        links.refresh();
        let expected = PodContainer {
            namespace: "shop".into(),
            pod: "web-5d8f7".into(),
            container: "app".into(),
        };
        assert_eq!(links.get(&id).as_deref(), Some(&expected));
        assert_eq!(links.known.len(), 1);
        std::fs::remove_file(dir.path().join(format!("web-5d8f7_shop_app-{id}.log"))).unwrap();
        links.refresh();
        assert!(links.get(&id).is_none());
    }

    /// A Docker root holding the directory of container `id`; the path of its record.
    fn docker_root(id: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let container = dir.path().join("containers").join(id);
        std::fs::create_dir_all(&container).unwrap();
        (dir, container.join("config.v2.json"))
    }

    #[test]
    fn reads_name_image_and_labels() {
        let id = "a".repeat(64);
        let (dir, record) = docker_root(&id);
        std::fs::write(
            record,
            r#"{"ID":"x","Name":"/web","Config":{"Image":"nginx:1.25","Labels":{"app":"shop"}},"State":{}}"#,
        )
        .unwrap();
        let mut containers = DockerContainers::new(dir.path().to_str().unwrap());
        let info = containers.get(&id, true).unwrap();
        assert_eq!(info.name, "web");
        assert_eq!(info.image, "nginx:1.25");
        assert_eq!(info.labels["app"], "shop");
        assert!(containers.get(&"b".repeat(64), false).is_none());
    }

    /// A record rewritten (`docker rename`), broken or written late is read as it is now; one
    /// gone keeps the name it had.
    #[test]
    fn a_rewritten_record_is_read_again() {
        let id = "c".repeat(64);
        let (dir, record) = docker_root(&id);
        let mut containers = DockerContainers::new(dir.path().to_str().unwrap());
        assert!(containers.get(&id, true).is_none(), "no record yet");
        std::fs::write(&record, r#"{"Name": "#).unwrap();
        assert!(containers.get(&id, true).is_none(), "a broken record");
        std::fs::write(&record, r#"{"Name":"/web"}"#).unwrap();
        assert_eq!(containers.get(&id, true).unwrap().name, "web");
        std::fs::write(&record, r#"{"Name":"/renamed"}"#).unwrap();
        assert_eq!(containers.get(&id, true).unwrap().name, "renamed");
        // `docker rm` may remove the record before the log is read to its end.
        std::fs::remove_file(&record).unwrap();
        assert_eq!(containers.get(&id, true).unwrap().name, "renamed");
    }
}
