//! mqtt: subscribes to a topic filter on an MQTT broker and writes each message as a
//! reading `{"topic": T, "value": V}` (V the payload as JSON, or as a number, or as
//! text). With `actuate = PREFIX`, every key put into the kv store `STORE-actuators`
//! is published to `PREFIX/KEY`.
//!
//! Nothing is lost where QoS 1 allows: the driver subscribes with QoS 1 in a persistent
//! session (a fixed client id, clean session off) and acknowledges a message only after
//! its reading is on disk, so a message that arrived but was not stored is sent again;
//! while the driver is disconnected the broker keeps its messages (for as long as the
//! broker itself keeps its sessions). When the broker goes away the driver fails and
//! the supervisor reconnects it with backoff.
//!
//! The driver is `running` once the broker has granted the subscription (its SUBACK),
//! not merely accepted the connection; a refused subscription (an ACL, say) is an
//! error, retried with backoff and shown by `hearth driver ls`.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use serde_json::{Value, json};

use super::{Context, Outcome};
use hearth_stores::{Change, Reading};

/// The kv store whose keys a driver writing `store` publishes.
pub fn actuator_store(store: &str) -> String {
    format!("{store}-actuators")
}

/// `HOST:PORT`, checked.
pub fn parse_broker(broker: &str) -> Result<(String, u16), String> {
    let (host, port) = broker
        .rsplit_once(':')
        .ok_or_else(|| format!("{broker:?} is not HOST:PORT"))?;
    let port = port
        .parse()
        .map_err(|_| format!("{port:?} is not a port number"))?;
    if host.is_empty() {
        return Err(format!("{broker:?} has no host"));
    }
    Ok((host.trim_matches(['[', ']']).to_owned(), port))
}

/// A topic filter as MQTT defines it (`+` a whole level, `#` the whole last level).
pub fn check_filter(filter: &str) -> Result<(), String> {
    let levels: Vec<&str> = filter.split('/').collect();
    let bad = filter.is_empty()
        || filter.len() > 1024
        || levels.iter().enumerate().any(|(i, level)| {
            (level.contains('+') && *level != "+")
                || (level.contains('#') && (*level != "#" || i + 1 != levels.len()))
        });
    if bad {
        return Err(format!("{filter:?} is not an MQTT topic filter"));
    }
    Ok(())
}

/// A topic to publish to (no wildcards).
pub fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.contains(['+', '#']) || topic.len() > 1024 {
        return Err(format!("{topic:?} is not an MQTT topic to publish to"));
    }
    Ok(())
}

/// A message's payload as a JSON value.
pub fn payload_value(payload: &[u8]) -> Value {
    if let Ok(value) = serde_json::from_slice::<Value>(payload) {
        return value;
    }
    let text = String::from_utf8_lossy(payload);
    match text.trim().parse::<f64>() {
        Ok(n) if n.is_finite() => json!(n),
        _ => Value::String(text.into_owned()),
    }
}

fn publish_payload(value: &Value) -> Vec<u8> {
    match value {
        Value::String(text) => text.as_bytes().to_vec(),
        other => other.to_string().into_bytes(),
    }
}

/// What the broker's answer to the subscription means: the detail to show, or the
/// error when it refused.
pub fn subscribed(
    filter: &str,
    broker: &str,
    codes: &[SubscribeReasonCode],
) -> Result<String, String> {
    match codes {
        [SubscribeReasonCode::Success(QoS::AtMostOnce)] => Ok(format!(
            "subscribed to {filter} on {broker} (the broker granted QoS 0 only: messages \
             may be lost while the driver is away)"
        )),
        [SubscribeReasonCode::Success(_)] => Ok(format!("subscribed to {filter} on {broker}")),
        [SubscribeReasonCode::Failure] => Err(format!(
            "the broker {broker} refused the subscription to {filter} (is the user allowed \
             to read it?)"
        )),
        other => Err(format!(
            "the broker {broker} answered the subscription to {filter} with {} return codes \
             instead of one",
            other.len()
        )),
    }
}

/// Runs until stopped, or fails when the broker cannot be reached, goes away or
/// refuses the subscription.
pub async fn run(mut ctx: Context) -> Result<Outcome, String> {
    let broker = ctx.spec.broker.clone().unwrap_or_default();
    let (host, port) = parse_broker(&broker)?;
    let filter = ctx.spec.topic.clone().unwrap_or_default();
    let mut client_id: String = format!("hearth-{}-{}", ctx.node.config.name, ctx.spec.name)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    client_id.truncate(64);
    let mut options = MqttOptions::new(client_id, host, port);
    options.set_keep_alive(Duration::from_secs(10));
    options.set_clean_session(false);
    options.set_manual_acks(true);
    // Room for any payload a reading can hold (and more, so that an oversized one is
    // refused by the store with a reason instead of breaking the connection).
    options.set_max_packet_size(4 * 1024 * 1024, 1024 * 1024);
    if let (Some(user), Some(password)) = (&ctx.spec.user, &ctx.spec.password) {
        options.set_credentials(user.clone(), password.clone());
    }
    let (client, mut events) = AsyncClient::new(options, 64);
    client
        .subscribe(filter.clone(), QoS::AtLeastOnce)
        .await
        .map_err(|err| err.to_string())?;
    let mut actuators = match &ctx.spec.actuate {
        Some(_) => Some(
            ctx.node
                .stores
                .get(&actuator_store(&ctx.spec.store))
                .map_err(|err| err.to_string())?
                .subscribe(),
        ),
        None => None,
    };
    let prefix = ctx.spec.actuate.clone().unwrap_or_default();
    let mut connected = false;
    ctx.set(|s| s.detail = Some(format!("connecting to {broker}")));
    loop {
        tokio::select! {
            () = ctx.stopped() => {
                let _ = client.disconnect().await;
                return Ok(Outcome::Stopped);
            }
            event = events.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    ctx.set(|s| s.detail = Some(format!("connected to {broker}, subscribing to {filter}")));
                }
                // Up only once the broker has granted the subscription.
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    ctx.running(Some(subscribed(&filter, &broker, &ack.return_codes)?));
                }
                Ok(Event::Incoming(Packet::Publish(message))) => {
                    let value = json!({
                        "topic": message.topic,
                        "value": payload_value(&message.payload),
                    });
                    let store = ctx.store.clone();
                    let reading = Reading::new(super::now_ms(), value);
                    match tokio::task::spawn_blocking(move || store.append(vec![reading]))
                        .await
                        .map_err(|err| err.to_string())?
                    {
                        Ok(()) => ctx.wrote(1),
                        // A message no reading can hold (too large, say): say so and
                        // acknowledge it, or the broker would send it again forever.
                        Err(hearth_stores::StoreError::Invalid(reason)) => {
                            let topic = message.topic.clone();
                            tracing::warn!(%topic, %reason, "dropping an MQTT message");
                            ctx.set(|s| {
                                s.last_error = Some(format!("dropped a message on {topic}: {reason}"));
                            });
                        }
                        Err(err) => return Err(format!("cannot write: {err}")),
                    }
                    // Only now: a message not stored is redelivered.
                    client.ack(&message).await.map_err(|err| err.to_string())?;
                }
                Ok(_) => {}
                Err(err) => {
                    return Err(if connected {
                        format!("lost the broker {broker}: {err}")
                    } else {
                        format!("cannot reach the broker {broker}: {err}")
                    });
                }
            },
            change = async {
                match actuators.as_mut() {
                    Some(changes) => changes.recv().await,
                    None => std::future::pending().await,
                }
            } => match change {
                Ok(Change::Put { key, value }) => {
                    let topic = format!("{prefix}/{key}");
                    client
                        .publish(topic, QoS::AtLeastOnce, false, publish_payload(&value))
                        .await
                        .map_err(|err| err.to_string())?;
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => actuators = None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_topics_and_payloads() {
        assert!(check_filter("home/+/temperature").is_ok());
        assert!(check_filter("home/#").is_ok());
        assert!(check_filter("#").is_ok());
        for bad in ["", "home/#/x", "home/te+mp", "a#"] {
            assert!(check_filter(bad).is_err(), "{bad:?}");
        }
        assert!(check_topic("home/lights").is_ok());
        assert!(check_topic("home/+").is_err());
        assert_eq!(payload_value(b"21.5"), json!(21.5));
        assert_eq!(payload_value(b"{\"t\": 1}"), json!({"t": 1}));
        assert_eq!(payload_value(b"on"), json!("on"));
        assert_eq!(
            parse_broker("127.0.0.1:1883").ok(),
            Some(("127.0.0.1".into(), 1883))
        );
        assert!(parse_broker("nohost").is_err());
    }

    #[test]
    fn reads_the_subscription_answer() {
        let ok = subscribed(
            "a/#",
            "b:1",
            &[SubscribeReasonCode::Success(QoS::AtLeastOnce)],
        );
        assert_eq!(ok, Ok("subscribed to a/# on b:1".to_owned()));
        let downgraded = subscribed(
            "a/#",
            "b:1",
            &[SubscribeReasonCode::Success(QoS::AtMostOnce)],
        );
        assert!(downgraded.is_ok_and(|d| d.contains("QoS 0")));
        let refused = subscribed("a/#", "b:1", &[SubscribeReasonCode::Failure]);
        assert!(refused.is_err_and(|e| e.contains("refused the subscription to a/#")));
        assert!(subscribed("a/#", "b:1", &[]).is_err());
    }
}
