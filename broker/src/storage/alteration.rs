//! A topic's configs changed in place (AlterConfigs, IncrementalAlterConfigs): checked as at
//! creation, saved in `topics.json` first, then applied to the topic and its partitions; the
//! segments already written keep their size, and retention and compaction use the new values
//! at their next run.

use std::collections::BTreeMap;

use super::topics::TopicSettings;
use super::{Storage, TopicError};

impl Storage {
    /// Changes `name`'s config overrides with `change` (an error there is the request's
    /// fault); with `validate_only`, only checks.
    pub async fn alter_topic_configs(
        &self,
        name: &str,
        change: impl FnOnce(&mut BTreeMap<String, String>) -> Result<(), String>,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        let (_admin, topic) = self.topic_to_change(name).await?;
        let mut configs = topic.overrides();
        change(&mut configs).map_err(TopicError::InvalidConfig)?;
        let settings =
            TopicSettings::resolve(&self.defaults, &configs).map_err(TopicError::InvalidConfig)?;
        if validate_only {
            return Ok(());
        }
        self.save_topics(|records| {
            if let Some(record) = records.get_mut(name) {
                record.configs = configs.clone();
            }
        })?;
        let changed: Vec<String> = configs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        topic.record.write().expect("topic lock").configs = configs;
        *topic.settings.write().expect("topic lock") = settings;
        for partition in topic.partitions.read().expect("topic lock").iter() {
            partition.set_log_settings(settings.log_settings());
        }
        tracing::info!(topic = name, configs = %changed.join(" "), "topic configs changed");
        Ok(())
    }
}
