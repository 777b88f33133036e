//! `audit` (the sink) and each resource's `audit` level and `allow` rules.

use serde_saphyr::Spanned;

use super::load::{site, Ctx};
use super::raw;
use super::types::*;

impl Ctx {
    pub(super) fn audit_settings(&mut self, block: &Spanned<raw::Audit>) -> AuditSettings {
        let a = &block.value;
        let sink = match a.sink.value {
            raw::AuditSink::Stdout => {
                for (key, set) in [
                    ("path", a.path.is_some()),
                    ("max_size", a.max_size.is_some()),
                    ("max_files", a.max_files.is_some()),
                ] {
                    if set {
                        self.problem(
                            site(&a.sink, format!("audit.{key}")),
                            format!("{key} applies to sink: file only"),
                        );
                    }
                }
                AuditSink::Stdout
            }
            raw::AuditSink::File => {
                let path = match &a.path {
                    Some(p) if !p.value.trim().is_empty() => self.base.join(p.value.trim()),
                    Some(p) => {
                        self.problem(site(p, "audit.path"), "must not be empty");
                        self.base.join("audit.jsonl")
                    }
                    None => {
                        self.problem(
                            site(&a.sink, "audit.path"),
                            "sink: file needs path (the audit file)",
                        );
                        self.base.join("audit.jsonl")
                    }
                };
                let max_size = match &a.max_size {
                    Some(v) => match v.value.0 {
                        Some(n) if n >= 4096 => n,
                        Some(_) => {
                            self.problem(site(v, "audit.max_size"), "must be at least 4KiB");
                            DEFAULT_AUDIT_MAX_SIZE
                        }
                        None => {
                            self.problem(
                                site(v, "audit.max_size"),
                                "expected a size such as 100MiB, 10MB or 1048576",
                            );
                            DEFAULT_AUDIT_MAX_SIZE
                        }
                    },
                    None => DEFAULT_AUDIT_MAX_SIZE,
                };
                let max_files = match &a.max_files {
                    Some(v) if v.value == 0 => {
                        self.problem(
                            site(v, "audit.max_files"),
                            "must be at least 1 (rotated files kept)",
                        );
                        DEFAULT_AUDIT_MAX_FILES
                    }
                    Some(v) => v.value,
                    None => DEFAULT_AUDIT_MAX_FILES,
                };
                AuditSink::File {
                    path,
                    max_size,
                    max_files,
                }
            }
        };
        let queue = match &a.queue {
            Some(v) if v.value == 0 => {
                self.problem(site(v, "audit.queue"), "must be at least 1");
                DEFAULT_AUDIT_QUEUE
            }
            Some(v) => v.value as usize,
            None => DEFAULT_AUDIT_QUEUE,
        };
        AuditSettings { sink, queue }
    }

    /// A resource's audit level: `sessions` when the top-level block exists and the resource
    /// does not say, `off` without the block.
    pub(super) fn resource_audit(
        &mut self,
        res: &raw::Resource,
        protocol: Protocol,
        audited: bool,
        at: &str,
    ) -> ResourceAudit {
        let Some(own) = &res.audit else {
            return ResourceAudit {
                level: if audited {
                    AuditLevel::Sessions
                } else {
                    AuditLevel::Off
                },
                mask_literals: false,
            };
        };
        let path = format!("{at}.audit");
        let audit = own.value;
        if !audited && audit.level != AuditLevel::Off {
            self.problem(
                site(own, &path),
                "no top-level audit block: add one (audit: {sink: stdout}) to say where events go",
            );
        }
        let fits = match audit.level {
            AuditLevel::Off | AuditLevel::Sessions => true,
            AuditLevel::Requests => protocol == Protocol::Http,
            AuditLevel::Statements => matches!(
                protocol,
                Protocol::Postgres | Protocol::Mysql | Protocol::Redis
            ),
        };
        if !fits {
            let which = match audit.level {
                AuditLevel::Requests => "requests applies to protocol http",
                _ => "statements applies to protocols postgres, mysql and redis",
            };
            self.problem(site(own, &path), format!("audit level {which}"));
        }
        if audit.mask_literals && !matches!(protocol, Protocol::Postgres | Protocol::Mysql) {
            self.problem(
                site(own, format!("{path}.mask_literals")),
                "mask_literals applies to SQL statements (protocols postgres and mysql)",
            );
        }
        audit
    }

    /// `allow` and `deny` rules of a redis resource: command names and `@categories`.
    pub(super) fn command_rules(&mut self, res: &raw::Resource, at: &str) -> CommandRules {
        let mut rules = CommandRules::default();
        for (key, list) in [("allow", &res.allow), ("deny", &res.deny)] {
            let Some(list) = list else {
                continue;
            };
            let mut names = Vec::new();
            for (i, rule) in list.value.iter().enumerate() {
                let at = format!("{at}.{key}[{i}]");
                if rule.methods.is_some() || rule.paths.is_some() {
                    self.problem(
                        site(list, &at),
                        "redis rules name commands: use commands: [GET, \"@read\"], not methods or paths",
                    );
                }
                let Some(commands) = &rule.commands else {
                    self.problem(site(list, &at), "a redis rule needs commands");
                    continue;
                };
                for c in commands {
                    match c.strip_prefix('@') {
                        Some(cat)
                            if REDIS_CATEGORIES.contains(&cat.to_ascii_lowercase().as_str()) =>
                        {
                            names.push(format!("@{}", cat.to_ascii_lowercase()));
                        }
                        Some(cat) => self.problem(
                            site(list, format!("{at}.commands")),
                            format!(
                                "unknown category \"@{cat}\": Redis's are {}",
                                REDIS_CATEGORIES.map(|c| format!("@{c}")).join(", ")
                            ),
                        ),
                        None if !c.is_empty()
                            && c.chars().all(|ch| {
                                ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.')
                            }) =>
                        {
                            names.push(c.to_ascii_uppercase());
                        }
                        None => self.problem(
                            site(list, format!("{at}.commands")),
                            format!("\"{c}\" is not a command name"),
                        ),
                    }
                }
            }
            if key == "allow" {
                if names.is_empty() {
                    self.problem(
                        site(list, format!("{at}.allow")),
                        "an empty allow list would refuse every command: remove it, or list commands",
                    );
                }
                rules.allow = Some(names);
            } else {
                rules.deny = names;
            }
        }
        rules
    }

    /// `allow` rules (http).
    pub(super) fn allow_rules(
        &mut self,
        res: &raw::Resource,
        protocol: Protocol,
        at: &str,
    ) -> Vec<HttpRule> {
        if let (Some(deny), false) = (&res.deny, protocol == Protocol::Redis) {
            self.problem(
                site(deny, format!("{at}.deny")),
                "deny applies to protocol redis",
            );
        }
        let Some(rules) = &res.allow else {
            return Vec::new();
        };
        let path = format!("{at}.allow");
        if protocol == Protocol::Redis {
            return Vec::new();
        }
        if protocol != Protocol::Http {
            self.problem(
                site(rules, &path),
                "allow applies to protocols http and redis",
            );
            return Vec::new();
        }
        if rules.value.is_empty() {
            self.problem(
                site(rules, &path),
                "an empty allow list would refuse every request: remove it, or list rules",
            );
        }
        let mut out = Vec::new();
        for (i, rule) in rules.value.iter().enumerate() {
            let at = format!("{path}[{i}]");
            if rule.commands.is_some() {
                self.problem(
                    site(rules, format!("{at}.commands")),
                    "commands applies to protocol redis: http rules take methods and paths",
                );
            }
            let mut methods = Vec::new();
            for m in rule.methods.iter().flatten() {
                match ::http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                    Ok(method) => methods.push(method),
                    Err(_) => self.problem(
                        site(rules, format!("{at}.methods")),
                        format!("\"{m}\" is not an HTTP method"),
                    ),
                }
            }
            let mut paths = Vec::new();
            for p in rule.paths.iter().flatten() {
                if !p.starts_with('/') {
                    self.problem(
                        site(rules, format!("{at}.paths")),
                        format!("\"{p}\" must start with '/'"),
                    );
                } else if p.contains(['?', '#']) {
                    self.problem(
                        site(rules, format!("{at}.paths")),
                        format!("\"{p}\": a path glob matches the path only, without ? or #"),
                    );
                } else {
                    paths.push(p.clone());
                }
            }
            if rule.methods.as_ref().is_some_and(Vec::is_empty)
                || rule.paths.as_ref().is_some_and(Vec::is_empty)
            {
                self.problem(
                    site(rules, &at),
                    "an empty methods or paths list matches nothing: leave the key out to match any",
                );
            }
            out.push(HttpRule { methods, paths });
        }
        out
    }
}
