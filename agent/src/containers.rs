//! What Docker knows of a container: its name, image and labels, from
//! `<root>/containers/<id>/config.v2.json`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerInfo {
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
}

/// Container metadata by id, read once per container and forgotten when it goes away.
pub struct DockerContainers {
    root: PathBuf,
    known: HashMap<String, Arc<ContainerInfo>>,
}

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
        }
    }

    /// The container's metadata, or `None` when Docker has no record of it (not a Docker
    /// container, or the file is unreadable); looked for again next time.
    pub fn get(&mut self, id: &str) -> Option<Arc<ContainerInfo>> {
        if let Some(info) = self.known.get(id) {
            return Some(info.clone());
        }
        let path = self.root.join("containers").join(id).join("config.v2.json");
        let size = std::fs::metadata(&path).ok()?.len();
        if size > MAX_CONFIG_BYTES {
            return None;
        }
        let config: ConfigV2 = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
        let info = Arc::new(ContainerInfo {
            name: config.name.trim_start_matches('/').to_owned(),
            image: config.config.image,
            labels: config.config.labels.unwrap_or_default(),
        });
        self.known.insert(id.to_owned(), info.clone());
        Some(info)
    }

    /// Forgets the containers not in `alive`.
    pub fn retain(&mut self, alive: &std::collections::HashSet<String>) {
        self.known.retain(|id, _| alive.contains(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_name_image_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let id = "a".repeat(64);
        let container = dir.path().join("containers").join(&id);
        std::fs::create_dir_all(&container).unwrap();
        std::fs::write(
            container.join("config.v2.json"),
            r#"{"ID":"x","Name":"/web","Config":{"Image":"nginx:1.25","Labels":{"app":"shop"}},"State":{}}"#,
        )
        .unwrap();
        let mut containers = DockerContainers::new(dir.path().to_str().unwrap());
        let info = containers.get(&id).unwrap();
        assert_eq!(info.name, "web");
        assert_eq!(info.image, "nginx:1.25");
        assert_eq!(info.labels["app"], "shop");
        assert!(containers.get(&"b".repeat(64)).is_none());
    }
}
