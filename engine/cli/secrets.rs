//! `engine secrets set|decrypt` (per-tenant credentials, encrypted) and `engine tenants
//! link|unlink|list` (which tenant a provider's id belongs to).

use std::path::Path;
use std::process::ExitCode;

use super::{TenantsAction, keyring, project, runtime};

pub(super) fn tenants(action: TenantsAction, dir: &Path, env_file: Option<&Path>) -> ExitCode {
    use crate::connection::tenant;
    let project = match project(dir, env_file) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let Some(url) = project.settings.database_url.clone() else {
        eprintln!("engine: DATABASE_URL is not set: tenant links live in the database");
        return ExitCode::from(1);
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        let pool = crate::db::pool(&url, 1).map_err(|e| crate::diagnostics::chain(&e))?;
        match action {
            TenantsAction::Link { source, id, tenant } => {
                tenant::link(&pool, &source, &id, &tenant)
                    .await
                    .map_err(|e| crate::diagnostics::chain(&e))?;
                println!("{source} {id} -> {tenant}");
            }
            TenantsAction::Unlink { source, id } => {
                let found = tenant::unlink(&pool, &source, &id)
                    .await
                    .map_err(|e| crate::diagnostics::chain(&e))?;
                println!("{}", if found { "unlinked" } else { "no such link" });
            }
            TenantsAction::List { tenant } => {
                for (source, id, t) in tenant::list(&pool, tenant.as_deref())
                    .await
                    .map_err(|e| crate::diagnostics::chain(&e))?
                {
                    println!("{source}\t{id}\t{t}");
                }
            }
        }
        Ok::<_, String>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("engine: {e}");
            ExitCode::from(1)
        }
    }
}

pub(super) fn secrets_set(
    tenant: &str,
    credential: &str,
    dir: &Path,
    env_file: Option<&Path>,
) -> ExitCode {
    let project = match project(dir, env_file) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let Some(url) = project.settings.database_url.clone() else {
        eprintln!("engine: DATABASE_URL is not set: secrets are stored in the database");
        return ExitCode::from(1);
    };
    let keyring = match keyring(&project) {
        Ok(k) => k,
        Err(code) => return code,
    };
    let mut value = String::new();
    if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut value) {
        eprintln!("engine: cannot read the secret from standard input: {e}");
        return ExitCode::from(2);
    }
    let value = value.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        eprintln!(
            "engine: no secret on standard input (e.g. `printf %s \"$TOKEN\" | engine secrets set ...`)"
        );
        return ExitCode::from(2);
    }
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        let pool = crate::db::pool(&url, 1).map_err(|e| crate::diagnostics::chain(&e))?;
        crate::verify::tenant::store(&pool, &keyring, tenant, credential, value)
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => {
            println!(
                "stored {credential} for tenant {tenant} (encrypted with key {})",
                keyring.current_id()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("engine: {e}");
            ExitCode::from(1)
        }
    }
}

pub(super) fn secrets_decrypt(context: &str, dir: &Path, env_file: Option<&Path>) -> ExitCode {
    let project = match project(dir, env_file) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let keyring = match keyring(&project) {
        Ok(k) => k,
        Err(code) => return code,
    };
    let mut value = String::new();
    if std::io::Read::read_to_string(&mut std::io::stdin(), &mut value).is_err()
        || value.trim().is_empty()
    {
        eprintln!("engine: no encrypted value on standard input");
        return ExitCode::from(2);
    }
    match keyring.decrypt(value.trim(), context) {
        Ok(plain) => {
            use std::io::Write as _;
            let _ = std::io::stdout().write_all(&plain);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("engine: {e}");
            ExitCode::from(1)
        }
    }
}
