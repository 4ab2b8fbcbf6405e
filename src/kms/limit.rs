//! A client-side rate limit on KMS calls, so a cold start of thousands of objects stays under
//! the account's KMS request quota instead of spending its retries on throttling.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{DecryptRequest, Decrypted, GeneratedKey, Kms, KmsError, PublicKeyInfo};
use crate::binding::EncryptionContext;

pub struct RateLimitedKms<K> {
    inner: K,
    interval: Duration,
    next: Mutex<Option<Instant>>,
}

impl<K> RateLimitedKms<K> {
    /// At most `per_second` calls per second (evenly spaced); 0 or less means unlimited.
    pub fn new(inner: K, per_second: f64) -> Self {
        let interval = if per_second > 0.0 {
            Duration::from_secs_f64(1.0 / per_second)
        } else {
            Duration::ZERO
        };
        RateLimitedKms {
            inner,
            interval,
            next: Mutex::new(None),
        }
    }

    pub fn inner(&self) -> &K {
        &self.inner
    }

    /// Reserves the next slot and waits for it.
    async fn wait_turn(&self) {
        if self.interval.is_zero() {
            return;
        }
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let slot = next.map_or(now, |n| n.max(now));
            *next = Some(slot + self.interval);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

impl<K: Kms> Kms for RateLimitedKms<K> {
    async fn generate_data_key(
        &self,
        key_id: &str,
        context: &EncryptionContext,
    ) -> Result<GeneratedKey, KmsError> {
        self.wait_turn().await;
        self.inner.generate_data_key(key_id, context).await
    }

    async fn decrypt(&self, request: DecryptRequest<'_>) -> Result<Decrypted, KmsError> {
        self.wait_turn().await;
        self.inner.decrypt(request).await
    }

    async fn public_key(&self, key_id: &str) -> Result<PublicKeyInfo, KmsError> {
        self.wait_turn().await;
        self.inner.public_key(key_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::MemoryKms;

    #[tokio::test(start_paused = true)]
    async fn calls_are_spaced_by_the_rate() {
        let memory = MemoryKms::new("eu-west-1");
        let key = memory.create_key();
        let limited = RateLimitedKms::new(memory, 10.0);
        let start = Instant::now();
        for _ in 0..11 {
            limited
                .generate_data_key(&key, &EncryptionContext::new())
                .await
                .unwrap();
        }
        // 11 calls at 10/s: the last one starts 1 s after the first (virtual time).
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_means_unlimited() {
        let memory = MemoryKms::new("eu-west-1");
        let key = memory.create_key();
        let limited = RateLimitedKms::new(memory, 0.0);
        let start = Instant::now();
        for _ in 0..5 {
            limited
                .generate_data_key(&key, &EncryptionContext::new())
                .await
                .unwrap();
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
