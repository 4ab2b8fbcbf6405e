//! KMS key identifiers: key ids, key ARNs, alias names and alias ARNs; and ARNs in general.

/// Any `arn:<partition>:<service>:<region>:<account>:<resource>` (region and account may be
/// empty, as in IAM's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arn<'a> {
    pub partition: &'a str,
    pub service: &'a str,
    pub region: &'a str,
    pub account: &'a str,
    pub resource: &'a str,
}

impl<'a> Arn<'a> {
    pub fn parse(s: &'a str) -> Option<Self> {
        let mut parts = s.splitn(6, ':');
        let (
            Some("arn"),
            Some(partition),
            Some(service),
            Some(region),
            Some(account),
            Some(resource),
        ) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        )
        else {
            return None;
        };
        Some(Arn {
            partition,
            service,
            region,
            account,
            resource,
        })
    }
}

/// A parsed `arn:<partition>:kms:<region>:<account>:<resource>` (key or alias).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsArn<'a> {
    pub partition: &'a str,
    pub region: &'a str,
    pub account: &'a str,
    /// `key/<id>` or `alias/<name>`.
    pub resource: &'a str,
}

impl<'a> KmsArn<'a> {
    pub fn parse(s: &'a str) -> Option<Self> {
        let Arn {
            partition,
            service: "kms",
            region,
            account,
            resource,
        } = Arn::parse(s)?
        else {
            return None;
        };
        let valid = !partition.is_empty()
            && !region.is_empty()
            && !account.is_empty()
            && (resource.starts_with("key/") || resource.starts_with("alias/"));
        valid.then_some(KmsArn {
            partition,
            region,
            account,
            resource,
        })
    }

    /// True for multi-region keys, whose ids start with `mrk-`.
    pub fn is_multi_region(&self) -> bool {
        self.resource.starts_with("key/mrk-")
    }

    /// The same ARN in another region (for a multi-region key: its replica there).
    pub fn in_region(&self, region: &str) -> String {
        format!(
            "arn:{}:kms:{}:{}:{}",
            self.partition, region, self.account, self.resource
        )
    }
}

/// Checks that `key` can name a KMS key as a user gives one (`--key`): a key id (a UUID, or
/// `mrk-` and 32 hex digits), a key or alias ARN, or `alias/NAME`. A bare name is most often an
/// alias without its prefix: the error suggests it.
pub fn check_key_name(key: &str) -> Result<(), String> {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    let uuid = key.len() == 36
        && key.split('-').map(str::len).eq([8usize, 4, 4, 4, 12])
        && hex(&key.replace('-', ""));
    let mrk = key
        .strip_prefix("mrk-")
        .is_some_and(|id| id.len() == 32 && hex(id));
    let alias = key.strip_prefix("alias/").is_some_and(|n| !n.is_empty());
    if uuid || mrk || alias || KmsArn::parse(key).is_some() {
        return Ok(());
    }
    let shown = crate::text::bounded(key, 120);
    if key.starts_with("arn:") {
        return Err(format!(
            "{shown:?} is not a KMS key or alias ARN (arn:aws:kms:REGION:ACCOUNT:key/ID or …:alias/NAME)"
        ));
    }
    let plausible_alias = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/'));
    if plausible_alias {
        Err(format!(
            "{shown:?} is not a key id, key ARN or alias; an alias is named alias/NAME: did you mean alias/{shown}?"
        ))
    } else {
        Err(format!(
            "{shown:?} is not a key id (a UUID or mrk-…), key ARN, alias (alias/NAME) or alias ARN"
        ))
    }
}

/// The region a key identifier pins, if it is an ARN.
pub fn region_of(key_id: &str) -> Option<&str> {
    KmsArn::parse(key_id).map(|arn| arn.region)
}

/// Whether `answered` (the key KMS says it used) is the key `expected`: the same ARN, or for a
/// multi-region key, a replica of it (same partition, account and key id, another region).
pub fn same_key(expected: &str, answered: &str) -> bool {
    if expected == answered {
        return true;
    }
    match (KmsArn::parse(expected), KmsArn::parse(answered)) {
        (Some(e), Some(a)) => {
            e.is_multi_region()
                && e.partition == a.partition
                && e.account == a.account
                && e.resource == a.resource
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_name_is_checked_and_a_bare_alias_gets_its_prefix_suggested() {
        for good in [
            "1234abcd-12ab-34cd-56ef-1234567890ab",
            "mrk-0123456789abcdef0123456789abcdef",
            "alias/kmseal",
            "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:kms:eu-west-1:111122223333:alias/kmseal",
        ] {
            assert_eq!(check_key_name(good), Ok(()), "{good}");
        }
        assert_eq!(
            check_key_name("kmseal-local").unwrap_err(),
            "\"kmseal-local\" is not a key id, key ARN or alias; an alias is named alias/NAME: did you mean alias/kmseal-local?"
        );
        assert!(
            check_key_name("arn:aws:kms:eu-west-1:1:thing")
                .unwrap_err()
                .contains("not a KMS key or alias ARN")
        );
        for bad in [
            "",
            "alias/",
            "mrk-xyz",
            "has space",
            "1234abcd-12ab-34cd-56ef-1234567890aZ",
        ] {
            let e = check_key_name(bad).unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
        assert!(
            !check_key_name("has space")
                .unwrap_err()
                .contains("did you mean")
        );
        // Hostile input is bounded and shown without control characters.
        let long = "x".repeat(10_000);
        assert!(check_key_name(&long).unwrap_err().len() < 400);
    }

    #[test]
    fn parses_key_and_alias_arns() {
        let arn = KmsArn::parse("arn:aws:kms:eu-west-1:111122223333:key/mrk-1234").unwrap();
        assert_eq!(arn.region, "eu-west-1");
        assert!(arn.is_multi_region());
        assert_eq!(
            arn.in_region("us-west-2"),
            "arn:aws:kms:us-west-2:111122223333:key/mrk-1234"
        );
        assert!(KmsArn::parse("arn:aws:kms:eu-west-1:111122223333:alias/app").is_some());
        assert!(KmsArn::parse("arn:aws:s3:::bucket").is_none());
        assert!(KmsArn::parse("alias/app").is_none());
        assert!(KmsArn::parse("1234abcd").is_none());
        assert_eq!(
            region_of("arn:aws-cn:kms:cn-north-1:1:key/x"),
            Some("cn-north-1")
        );
    }

    #[test]
    fn replicas_of_multi_region_keys_match() {
        let a = "arn:aws:kms:us-east-1:1:key/mrk-1";
        assert!(same_key(a, "arn:aws:kms:us-west-2:1:key/mrk-1"));
        assert!(!same_key(a, "arn:aws:kms:us-west-2:2:key/mrk-1"));
        assert!(!same_key(a, "arn:aws:kms:us-west-2:1:key/mrk-2"));
        let single = "arn:aws:kms:us-east-1:1:key/abc";
        assert!(same_key(single, single));
        assert!(!same_key(single, "arn:aws:kms:us-west-2:1:key/abc"));
    }
}
