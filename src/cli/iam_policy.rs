//! `kmseal iam-policy`: the IAM policy documents the controller's role, or one tenant's role,
//! needs for a key policy ([`crate::iam`]), printed as JSON for `aws iam put-role-policy` and
//! `aws iam create-role`. No AWS call.

use clap::Args;

use super::validate::PolicyFlags;
use super::{CliError, EXIT_OK, Io, usage};

#[derive(Debug, Args)]
pub struct IamPolicyArgs {
    #[command(flatten)]
    pub keys: PolicyFlags,
    /// The controller runs with --tenant-identity: the key policy's identities rules apply, and
    /// the controller's role needs nothing for namespaces whose objects all use their own role.
    #[arg(long, help_heading = "Per-tenant identity")]
    pub tenant_identity: bool,
    /// The controller's --default-service-account: no object then uses the controller's role.
    #[arg(
        long,
        value_name = "NAME",
        requires = "tenant_identity",
        help_heading = "Per-tenant identity"
    )]
    pub default_service_account: Option<String>,
    /// The controller's --require-service-account.
    #[arg(
        long,
        requires = "tenant_identity",
        help_heading = "Per-tenant identity"
    )]
    pub require_service_account: bool,
    /// Print the permissions of a tenant's role for this namespace instead of the controller's.
    #[arg(
        short = 'n',
        long,
        value_name = "NAMESPACE",
        help_heading = "Per-tenant identity"
    )]
    pub namespace: Option<String>,
    /// With --namespace: print the role's trust policy instead, for this OIDC provider
    /// (arn:aws:iam::ACCOUNT:oidc-provider/ISSUER) and --service-account.
    #[arg(
        long,
        value_name = "ARN",
        requires_all = ["namespace", "service_account"],
        help_heading = "Per-tenant identity"
    )]
    pub trust: Option<String>,
    /// With --trust: the ServiceAccount whose tokens the role trusts.
    #[arg(long, value_name = "NAME", help_heading = "Per-tenant identity")]
    pub service_account: Option<String>,
    /// With --trust: the tokens' audience (the ServiceAccount's eks.amazonaws.com/audience).
    #[arg(
        long,
        value_name = "AUDIENCE",
        default_value = crate::identity::DEFAULT_AUDIENCE,
        help_heading = "Per-tenant identity"
    )]
    pub audience: String,
}

pub(super) fn iam_policy_command(args: &IamPolicyArgs, io: &mut Io<'_>) -> Result<i32, CliError> {
    if args.keys.is_empty() {
        return Err(usage(
            "name the keys: --key-policy FILE (the controller's key policy file) or --allowed-keys KEYS"
                .to_owned(),
        ));
    }
    let (rules, identities) = args.keys.rules()?;
    for (flag, name) in [
        ("--default-service-account", &args.default_service_account),
        ("--service-account", &args.service_account),
    ] {
        if let Some(name) = name
            && !crate::identity::valid_service_account_name(name)
        {
            return Err(usage(format!(
                "{flag}: {name:?} is not a ServiceAccount name"
            )));
        }
    }
    let document = match (&args.namespace, &args.trust) {
        (Some(namespace), Some(provider)) => {
            crate::binding::validate_namespace(namespace)
                .map_err(|e| usage(format!("--namespace: {e}")))?;
            let service_account = args.service_account.as_deref().unwrap_or_default();
            crate::iam::trust_policy(provider, namespace, service_account, &args.audience)
                .ok_or_else(|| {
                    usage(format!(
                        "--trust: {:?} is not an OIDC provider ARN (arn:aws:iam::ACCOUNT:oidc-provider/ISSUER; aws iam list-open-id-connect-providers)",
                        crate::text::bounded(provider, 200)
                    ))
                })?
        }
        (Some(namespace), None) => {
            crate::binding::validate_namespace(namespace)
                .map_err(|e| usage(format!("--namespace: {e}")))?;
            crate::iam::tenant_policy(&rules, namespace)
        }
        (None, _) => crate::iam::controller_policy(
            &rules,
            &crate::identity::IdentitySettings {
                enabled: args.tenant_identity,
                default_service_account: args.default_service_account.clone(),
                required_by_default: args.require_service_account,
                rules: identities,
            },
        ),
    };
    let mut text = serde_json::to_string_pretty(&document)?;
    text.push('\n');
    io.stdout.write_all(text.as_bytes())?;
    Ok(EXIT_OK)
}
