//! Device topics: `{root}/devices/{device_id}/readings` in, `.../results` out.

use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Topics {
    root: String,
}

impl Topics {
    pub fn new(root: &str) -> Self {
        Self {
            root: root.to_string(),
        }
    }

    /// The filter the service subscribes to, inside a shared subscription.
    pub fn shared_readings_filter(&self, group: &str) -> String {
        format!("$share/{group}/{}/devices/+/readings", self.root)
    }

    pub fn readings(&self, device_id: Uuid) -> String {
        format!("{}/devices/{device_id}/readings", self.root)
    }

    pub fn results(&self, device_id: Uuid) -> String {
        format!("{}/devices/{device_id}/results", self.root)
    }

    /// The device id named by a readings topic; `None` when the topic does not name one.
    pub fn device_of(&self, topic: &str) -> Option<Uuid> {
        let rest = topic.strip_prefix(&self.root)?.strip_prefix("/devices/")?;
        let id = rest.strip_suffix("/readings")?;
        Uuid::parse_str(id).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_readings_topic_names_its_device() {
        let t = Topics::new("vigil/v1");
        let id = Uuid::from_u128(42);
        assert_eq!(t.device_of(&t.readings(id)), Some(id));
        assert_eq!(t.device_of("vigil/v1/devices/not-a-uuid/readings"), None);
        assert_eq!(t.device_of(&t.results(id)), None);
        assert_eq!(t.device_of(&format!("other/devices/{id}/readings")), None);
        assert_eq!(
            t.shared_readings_filter("g"),
            "$share/g/vigil/v1/devices/+/readings"
        );
    }
}
