//! Leader election with a `coordination.k8s.io/v1` Lease, so the chart can run two operator
//! replicas with one active (the client-go `leaderelection` protocol, simplified): the holder
//! renews `renewTime` every `renew_every`; another candidate takes over once
//! `renewTime + leaseDurationSeconds` has passed. Writes use `replace` with the read
//! `resourceVersion`, so two candidates racing for an expired lease cannot both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, PostParams};

use crate::error::Result;

/// What a candidate does with the lease it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No lease yet: create it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Another holder's lease expired (or has no holder): take it over.
    Takeover,
    /// Another holder is alive: wait.
    Wait,
}

/// Pure decision on a read lease.
pub fn decide(
    lease: Option<&LeaseSpec>,
    identity: &str,
    now: Timestamp,
    default_duration: Duration,
) -> Decision {
    let Some(spec) = lease else {
        return Decision::Create;
    };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == identity => Decision::Renew,
        None | Some("") => Decision::Takeover,
        Some(_) => {
            let seconds = spec
                .lease_duration_seconds
                .map_or(default_duration.as_secs() as i64, i64::from);
            let expired = spec
                .renew_time
                .as_ref()
                .is_none_or(|renewed| renewed.0 + SignedDuration::from_secs(seconds) < now);
            if expired {
                Decision::Takeover
            } else {
                Decision::Wait
            }
        }
    }
}

/// One candidate for the lease `name` in `namespace`.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
}

impl LeaderElector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        lease_duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            lease_duration,
        }
    }

    /// Tries once to become or stay leader. `Ok(true)` when we hold the lease now.
    ///
    /// # Errors
    /// API errors other than a lost race (409 Conflict), which is `Ok(false)`.
    pub async fn try_acquire_or_renew(&self) -> Result<bool> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await?;
        let decision = decide(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &self.identity,
            now,
            self.lease_duration,
        );
        let duration = i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let result = match (decision, current) {
            (Decision::Wait, _) => return Ok(false),
            (Decision::Create, _) | (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(duration),
                        acquire_time: Some(MicroTime(now)),
                        renew_time: Some(MicroTime(now)),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                self.api
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            (decision, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                if decision == Decision::Takeover {
                    spec.holder_identity = Some(self.identity.clone());
                    spec.acquire_time = Some(MicroTime(now));
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.lease_duration_seconds = Some(duration);
                spec.renew_time = Some(MicroTime(now));
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
        };
        match result {
            Ok(()) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Blocks until this candidate holds the lease, retrying every `retry`.
    pub async fn acquire(&self, retry: Duration) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => tracing::debug!(lease = %self.name, "another operator replica leads"),
                Err(e) => tracing::warn!(error = %e, "leader election failed"),
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// Gives the lease up on shutdown (after client-go's `ReleaseOnCancel`): clears the holder
    /// when it is still us, so a standby takes over at once instead of after the lease duration.
    ///
    /// # Errors
    /// API errors; a lease held by someone else is left alone (`Ok(false)`).
    pub async fn release(&self) -> Result<bool> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(false);
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Renews every `renew_every` and returns when leadership is lost (a renewal was refused or
    /// failed for longer than the lease duration).
    pub async fn hold(&self, renew_every: Duration) {
        let mut last_renewed = std::time::Instant::now();
        loop {
            tokio::time::sleep(renew_every).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewed = std::time::Instant::now(),
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "lease renewal failed");
                    if last_renewed.elapsed() > self.lease_duration {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed_seconds_ago: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(
                now() - SignedDuration::from_secs(renewed_seconds_ago),
            )),
            ..LeaseSpec::default()
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn decisions() {
        let d = Duration::from_secs(15);
        assert_eq!(decide(None, "a", now(), d), Decision::Create);
        assert_eq!(
            decide(Some(&spec(Some("a"), 100)), "a", now(), d),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&spec(Some("b"), 5)), "a", now(), d),
            Decision::Wait
        );
        assert_eq!(
            decide(Some(&spec(Some("b"), 16)), "a", now(), d),
            Decision::Takeover
        );
        assert_eq!(
            decide(Some(&spec(None, 0)), "a", now(), d),
            Decision::Takeover
        );
    }
}
