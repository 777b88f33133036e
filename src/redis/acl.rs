//! Redis command rules (`allow`/`deny` by name and ACL category) and key counts for statement
//! events, from Redis 7's own command table: the categories (`ACL CAT <category>`) and key
//! positions (`COMMAND INFO`) below were read from Redis 7.0.15. A command with subcommands
//! (CONFIG, CLIENT, ...) is in a category for `allow` when all its subcommands are, and for
//! `deny` when any is: the stricter reading both ways. Commands Redis 7.0 does not know
//! (modules, newer versions) are in no category: only their name allows or denies them.

use crate::config::{CommandRules, REDIS_CATEGORIES};

/// A resource's command rules, ready to check names against.
#[derive(Debug, Clone)]
pub struct Policy {
    allow: Option<Vec<Pattern>>,
    deny: Vec<Pattern>,
}

#[derive(Debug, Clone)]
enum Pattern {
    /// A command name, lower case.
    Name(String),
    /// A category's bit and its spelling.
    Category(u32, String),
}

impl Pattern {
    fn parse(text: &str) -> Self {
        match text.strip_prefix('@') {
            Some(cat) => {
                let bit = REDIS_CATEGORIES
                    .iter()
                    .position(|c| *c == cat)
                    .map_or(0, |i| 1 << i);
                Self::Category(bit, text.to_owned())
            }
            None => Self::Name(text.to_ascii_lowercase()),
        }
    }

    fn matches(&self, name: &str, mask: u32) -> bool {
        match self {
            Self::Name(n) => n == name,
            Self::Category(bit, _) => mask & bit != 0,
        }
    }

    fn text(&self) -> String {
        match self {
            Self::Name(n) => n.to_ascii_uppercase(),
            Self::Category(_, t) => t.clone(),
        }
    }
}

impl Policy {
    /// The rules of a resource; `None` when it has none.
    pub fn build(rules: &CommandRules) -> Option<Self> {
        if rules.is_empty() {
            return None;
        }
        Some(Self {
            allow: rules
                .allow
                .as_ref()
                .map(|a| a.iter().map(|t| Pattern::parse(t)).collect()),
            deny: rules.deny.iter().map(|t| Pattern::parse(t)).collect(),
        })
    }

    /// Whether the command `name` (any case) may run; the rule that refused it otherwise.
    pub fn check(&self, name: &[u8]) -> Result<(), String> {
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        let (any, all) = lookup(&name).map_or((0, 0), |c| (c.1, c.2));
        if let Some(p) = self.deny.iter().find(|p| p.matches(&name, any)) {
            return Err(format!("deny {}", p.text()));
        }
        match &self.allow {
            Some(allow) if !allow.iter().any(|p| p.matches(&name, all)) => {
                Err("no allow rule matched".to_owned())
            }
            _ => Ok(()),
        }
    }
}

fn lookup(name: &str) -> Option<&'static (&'static str, u32, u32, i8, i8, i8)> {
    COMMANDS
        .binary_search_by(|c| c.0.cmp(name))
        .ok()
        .map(|i| &COMMANDS[i])
}

/// How many keys a command with `argc` arguments (its name included) names, by its key
/// positions; `None` for commands whose keys depend on their arguments (EVAL, XREAD, ...)
/// and commands Redis 7.0 does not know.
pub fn keys(name: &str, argc: u64) -> Option<u64> {
    let (_, _, _, first, last, step) = *lookup(&name.to_ascii_lowercase())?;
    if first < 0 {
        return None;
    }
    if first == 0 {
        return Some(0);
    }
    let argc = i64::try_from(argc).ok()?;
    let last = if last < 0 {
        argc + i64::from(last)
    } else {
        i64::from(last).min(argc - 1)
    };
    let (first, step) = (i64::from(first), i64::from(step.max(1)));
    if last < first {
        return Some(0);
    }
    u64::try_from((last - first) / step + 1).ok()
}

/// Every command (lower case, sorted), the categories any of its subcommands is in, and
/// the categories all of them are in (the same for a command without subcommands), and its
/// keys as `COMMAND INFO` gives them: first key, last key (negative: from the end), step
/// (first key -1: the keys depend on the arguments, `movablekeys`).
const COMMANDS: [(&str, u32, u32, i8, i8, i8); 240] = [
    ("acl", 0x2a000, 0x8000, 0, 0, 0),
    ("append", 0x4084, 0x4084, 1, 1, 1),
    ("asking", 0x44000, 0x44000, 0, 0, 0),
    ("auth", 0x44000, 0x44000, 0, 0, 0),
    ("bgrewriteaof", 0x2a000, 0x2a000, 0, 0, 0),
    ("bgsave", 0x2a000, 0x2a000, 0, 0, 0),
    ("bitcount", 0x8102, 0x8102, 1, 1, 1),
    ("bitfield", 0x8104, 0x8104, 1, 1, 1),
    ("bitfield_ro", 0x4102, 0x4102, 1, 1, 1),
    ("bitop", 0x8104, 0x8104, 2, -1, 1),
    ("bitpos", 0x8102, 0x8102, 1, 1, 1),
    ("blmove", 0x18024, 0x18024, 1, 2, 1),
    ("blmpop", 0x18024, 0x18024, -1, 0, 0),
    ("blpop", 0x18024, 0x18024, 1, -2, 1),
    ("brpop", 0x18024, 0x18024, 1, -2, 1),
    ("brpoplpush", 0x18024, 0x18024, 1, 2, 1),
    ("bzmpop", 0x18014, 0x18014, -1, 0, 0),
    ("bzpopmax", 0x14014, 0x14014, 1, -2, 1),
    ("bzpopmin", 0x14014, 0x14014, 1, -2, 1),
    ("client", 0x6a000, 0x48000, 0, 0, 0),
    ("cluster", 0x2a000, 0x8000, 0, 0, 0),
    ("command", 0x48000, 0x48000, 0, 0, 0),
    ("config", 0x2a000, 0x8000, 0, 0, 0),
    ("copy", 0x8005, 0x8005, 1, 2, 1),
    ("dbsize", 0x4003, 0x4003, 0, 0, 0),
    ("debug", 0x2a000, 0x2a000, 0, 0, 0),
    ("decr", 0x4084, 0x4084, 1, 1, 1),
    ("decrby", 0x4084, 0x4084, 1, 1, 1),
    ("del", 0x8005, 0x8005, 1, -1, 1),
    ("discard", 0x84000, 0x84000, 0, 0, 0),
    ("dump", 0x8003, 0x8003, 1, 1, 1),
    ("echo", 0x44000, 0x44000, 0, 0, 0),
    ("eval", 0x108000, 0x108000, -1, 0, 0),
    ("eval_ro", 0x108000, 0x108000, -1, 0, 0),
    ("evalsha", 0x108000, 0x108000, -1, 0, 0),
    ("evalsha_ro", 0x108000, 0x108000, -1, 0, 0),
    ("exec", 0x88000, 0x88000, 0, 0, 0),
    ("exists", 0x4003, 0x4003, 1, -1, 1),
    ("expire", 0x4005, 0x4005, 1, 1, 1),
    ("expireat", 0x4005, 0x4005, 1, 1, 1),
    ("expiretime", 0x4003, 0x4003, 1, 1, 1),
    ("failover", 0x2a000, 0x2a000, 0, 0, 0),
    ("fcall", 0x108000, 0x108000, -1, 0, 0),
    ("fcall_ro", 0x108000, 0x108000, -1, 0, 0),
    ("flushall", 0x28005, 0x28005, 0, 0, 0),
    ("flushdb", 0x28005, 0x28005, 0, 0, 0),
    ("function", 0x108004, 0x108000, 0, 0, 0),
    ("geoadd", 0x8404, 0x8404, 1, 1, 1),
    ("geodist", 0x8402, 0x8402, 1, 1, 1),
    ("geohash", 0x8402, 0x8402, 1, 1, 1),
    ("geopos", 0x8402, 0x8402, 1, 1, 1),
    ("georadius", 0x8404, 0x8404, 1, 1, 1),
    ("georadius_ro", 0x8402, 0x8402, 1, 1, 1),
    ("georadiusbymember", 0x8404, 0x8404, 1, 1, 1),
    ("georadiusbymember_ro", 0x8402, 0x8402, 1, 1, 1),
    ("geosearch", 0x8402, 0x8402, 1, 1, 1),
    ("geosearchstore", 0x8404, 0x8404, 1, 2, 1),
    ("get", 0x4082, 0x4082, 1, 1, 1),
    ("getbit", 0x4102, 0x4102, 1, 1, 1),
    ("getdel", 0x4084, 0x4084, 1, 1, 1),
    ("getex", 0x4084, 0x4084, 1, 1, 1),
    ("getrange", 0x8082, 0x8082, 1, 1, 1),
    ("getset", 0x4084, 0x4084, 1, 1, 1),
    ("hdel", 0x4044, 0x4044, 1, 1, 1),
    ("hello", 0x44000, 0x44000, 0, 0, 0),
    ("hexists", 0x4042, 0x4042, 1, 1, 1),
    ("hget", 0x4042, 0x4042, 1, 1, 1),
    ("hgetall", 0x8042, 0x8042, 1, 1, 1),
    ("hincrby", 0x4044, 0x4044, 1, 1, 1),
    ("hincrbyfloat", 0x4044, 0x4044, 1, 1, 1),
    ("hkeys", 0x8042, 0x8042, 1, 1, 1),
    ("hlen", 0x4042, 0x4042, 1, 1, 1),
    ("hmget", 0x4042, 0x4042, 1, 1, 1),
    ("hmset", 0x4044, 0x4044, 1, 1, 1),
    ("hrandfield", 0x8042, 0x8042, 1, 1, 1),
    ("hscan", 0x8042, 0x8042, 1, 1, 1),
    ("hset", 0x4044, 0x4044, 1, 1, 1),
    ("hsetnx", 0x4044, 0x4044, 1, 1, 1),
    ("hstrlen", 0x4042, 0x4042, 1, 1, 1),
    ("hvals", 0x8042, 0x8042, 1, 1, 1),
    ("incr", 0x4084, 0x4084, 1, 1, 1),
    ("incrby", 0x4084, 0x4084, 1, 1, 1),
    ("incrbyfloat", 0x4084, 0x4084, 1, 1, 1),
    ("info", 0x28000, 0x28000, 0, 0, 0),
    ("keys", 0x28003, 0x28003, 0, 0, 0),
    ("lastsave", 0x26000, 0x26000, 0, 0, 0),
    ("latency", 0x2a000, 0x8000, 0, 0, 0),
    ("lcs", 0x8082, 0x8082, 1, 2, 1),
    ("lindex", 0x8022, 0x8022, 1, 1, 1),
    ("linsert", 0x8024, 0x8024, 1, 1, 1),
    ("llen", 0x4022, 0x4022, 1, 1, 1),
    ("lmove", 0x8024, 0x8024, 1, 2, 1),
    ("lmpop", 0x8024, 0x8024, -1, 0, 0),
    ("lolwut", 0x4002, 0x4002, 0, 0, 0),
    ("lpop", 0x4024, 0x4024, 1, 1, 1),
    ("lpos", 0x8022, 0x8022, 1, 1, 1),
    ("lpush", 0x4024, 0x4024, 1, 1, 1),
    ("lpushx", 0x4024, 0x4024, 1, 1, 1),
    ("lrange", 0x8022, 0x8022, 1, 1, 1),
    ("lrem", 0x8024, 0x8024, 1, 1, 1),
    ("lset", 0x8024, 0x8024, 1, 1, 1),
    ("ltrim", 0x8024, 0x8024, 1, 1, 1),
    ("memory", 0x8002, 0x8000, 0, 0, 0),
    ("mget", 0x4082, 0x4082, 1, -1, 1),
    ("migrate", 0x28005, 0x28005, 3, 3, 1),
    ("module", 0x2a000, 0x8000, 0, 0, 0),
    ("monitor", 0x2a000, 0x2a000, 0, 0, 0),
    ("move", 0x4005, 0x4005, 1, 1, 1),
    ("mset", 0x8084, 0x8084, 1, -1, 2),
    ("msetnx", 0x8084, 0x8084, 1, -1, 2),
    ("multi", 0x84000, 0x84000, 0, 0, 0),
    ("object", 0x8003, 0x8001, 0, 0, 0),
    ("persist", 0x4005, 0x4005, 1, 1, 1),
    ("pexpire", 0x4005, 0x4005, 1, 1, 1),
    ("pexpireat", 0x4005, 0x4005, 1, 1, 1),
    ("pexpiretime", 0x4003, 0x4003, 1, 1, 1),
    ("pfadd", 0x4204, 0x4204, 1, 1, 1),
    ("pfcount", 0x8202, 0x8202, 1, -1, 1),
    ("pfdebug", 0x2a204, 0x2a204, 2, 2, 1),
    ("pfmerge", 0x8204, 0x8204, 1, -1, 1),
    ("pfselftest", 0x2a200, 0x2a200, 0, 0, 0),
    ("ping", 0x44000, 0x44000, 0, 0, 0),
    ("psetex", 0x8084, 0x8084, 1, 1, 1),
    ("psubscribe", 0x9000, 0x9000, 0, 0, 0),
    ("psync", 0x2a000, 0x2a000, 0, 0, 0),
    ("pttl", 0x4003, 0x4003, 1, 1, 1),
    ("publish", 0x5000, 0x5000, 0, 0, 0),
    ("pubsub", 0x9000, 0x8000, 0, 0, 0),
    ("punsubscribe", 0x9000, 0x9000, 0, 0, 0),
    ("quit", 0x44000, 0x44000, 0, 0, 0),
    ("randomkey", 0x8003, 0x8003, 0, 0, 0),
    ("readonly", 0x44000, 0x44000, 0, 0, 0),
    ("readwrite", 0x44000, 0x44000, 0, 0, 0),
    ("rename", 0x8005, 0x8005, 1, 2, 1),
    ("renamenx", 0x4005, 0x4005, 1, 2, 1),
    ("replconf", 0x2a000, 0x2a000, 0, 0, 0),
    ("replicaof", 0x2a000, 0x2a000, 0, 0, 0),
    ("reset", 0x44000, 0x44000, 0, 0, 0),
    ("restore", 0x28005, 0x28005, 1, 1, 1),
    ("restore-asking", 0x28005, 0x28005, 1, 1, 1),
    ("role", 0x26000, 0x26000, 0, 0, 0),
    ("rpop", 0x4024, 0x4024, 1, 1, 1),
    ("rpoplpush", 0x8024, 0x8024, 1, 2, 1),
    ("rpush", 0x4024, 0x4024, 1, 1, 1),
    ("rpushx", 0x4024, 0x4024, 1, 1, 1),
    ("sadd", 0x400c, 0x400c, 1, 1, 1),
    ("save", 0x2a000, 0x2a000, 0, 0, 0),
    ("scan", 0x8003, 0x8003, 0, 0, 0),
    ("scard", 0x400a, 0x400a, 1, 1, 1),
    ("script", 0x108000, 0x108000, 0, 0, 0),
    ("sdiff", 0x800a, 0x800a, 1, -1, 1),
    ("sdiffstore", 0x800c, 0x800c, 1, -1, 1),
    ("select", 0x44000, 0x44000, 0, 0, 0),
    ("set", 0x8084, 0x8084, 1, 1, 1),
    ("setbit", 0x8104, 0x8104, 1, 1, 1),
    ("setex", 0x8084, 0x8084, 1, 1, 1),
    ("setnx", 0x4084, 0x4084, 1, 1, 1),
    ("setrange", 0x8084, 0x8084, 1, 1, 1),
    ("shutdown", 0x2a000, 0x2a000, 0, 0, 0),
    ("sinter", 0x800a, 0x800a, 1, -1, 1),
    ("sintercard", 0x800a, 0x800a, -1, 0, 0),
    ("sinterstore", 0x800c, 0x800c, 1, -1, 1),
    ("sismember", 0x400a, 0x400a, 1, 1, 1),
    ("slaveof", 0x2a000, 0x2a000, 0, 0, 0),
    ("slowlog", 0x2a000, 0x8000, 0, 0, 0),
    ("smembers", 0x800a, 0x800a, 1, 1, 1),
    ("smismember", 0x400a, 0x400a, 1, 1, 1),
    ("smove", 0x400c, 0x400c, 1, 2, 1),
    ("sort", 0x2803c, 0x2803c, 1, 1, 1),
    ("sort_ro", 0x2803a, 0x2803a, 1, 1, 1),
    ("spop", 0x400c, 0x400c, 1, 1, 1),
    ("spublish", 0x5000, 0x5000, 1, 1, 1),
    ("srandmember", 0x800a, 0x800a, 1, 1, 1),
    ("srem", 0x400c, 0x400c, 1, 1, 1),
    ("sscan", 0x800a, 0x800a, 1, 1, 1),
    ("ssubscribe", 0x9000, 0x9000, 1, -1, 1),
    ("strlen", 0x4082, 0x4082, 1, 1, 1),
    ("subscribe", 0x9000, 0x9000, 0, 0, 0),
    ("substr", 0x8082, 0x8082, 1, 1, 1),
    ("sunion", 0x800a, 0x800a, 1, -1, 1),
    ("sunionstore", 0x800c, 0x800c, 1, -1, 1),
    ("sunsubscribe", 0x9000, 0x9000, 1, -1, 1),
    ("swapdb", 0x24005, 0x24005, 0, 0, 0),
    ("sync", 0x2a000, 0x2a000, 0, 0, 0),
    ("time", 0x4000, 0x4000, 0, 0, 0),
    ("touch", 0x4003, 0x4003, 1, -1, 1),
    ("ttl", 0x4003, 0x4003, 1, 1, 1),
    ("type", 0x4003, 0x4003, 1, 1, 1),
    ("unlink", 0x4005, 0x4005, 1, -1, 1),
    ("unsubscribe", 0x9000, 0x9000, 0, 0, 0),
    ("unwatch", 0x84000, 0x84000, 0, 0, 0),
    ("wait", 0x48000, 0x48000, 0, 0, 0),
    ("watch", 0x84000, 0x84000, 1, -1, 1),
    ("xack", 0x4804, 0x4804, 1, 1, 1),
    ("xadd", 0x4804, 0x4804, 1, 1, 1),
    ("xautoclaim", 0x4804, 0x4804, 1, 1, 1),
    ("xclaim", 0x4804, 0x4804, 1, 1, 1),
    ("xdel", 0x4804, 0x4804, 1, 1, 1),
    ("xgroup", 0x8804, 0x8800, 0, 0, 0),
    ("xinfo", 0x8802, 0x8800, 0, 0, 0),
    ("xlen", 0x4802, 0x4802, 1, 1, 1),
    ("xpending", 0x8802, 0x8802, 1, 1, 1),
    ("xrange", 0x8802, 0x8802, 1, 1, 1),
    ("xread", 0x18802, 0x18802, -1, 0, 0),
    ("xreadgroup", 0x18804, 0x18804, -1, 0, 0),
    ("xrevrange", 0x8802, 0x8802, 1, 1, 1),
    ("xsetid", 0x4804, 0x4804, 1, 1, 1),
    ("xtrim", 0x8804, 0x8804, 1, 1, 1),
    ("zadd", 0x4014, 0x4014, 1, 1, 1),
    ("zcard", 0x4012, 0x4012, 1, 1, 1),
    ("zcount", 0x4012, 0x4012, 1, 1, 1),
    ("zdiff", 0x8012, 0x8012, -1, 0, 0),
    ("zdiffstore", 0x8014, 0x8014, 1, 1, 1),
    ("zincrby", 0x4014, 0x4014, 1, 1, 1),
    ("zinter", 0x8012, 0x8012, -1, 0, 0),
    ("zintercard", 0x8012, 0x8012, -1, 0, 0),
    ("zinterstore", 0x8014, 0x8014, 1, 1, 1),
    ("zlexcount", 0x4012, 0x4012, 1, 1, 1),
    ("zmpop", 0x8014, 0x8014, -1, 0, 0),
    ("zmscore", 0x4012, 0x4012, 1, 1, 1),
    ("zpopmax", 0x4014, 0x4014, 1, 1, 1),
    ("zpopmin", 0x4014, 0x4014, 1, 1, 1),
    ("zrandmember", 0x8012, 0x8012, 1, 1, 1),
    ("zrange", 0x8012, 0x8012, 1, 1, 1),
    ("zrangebylex", 0x8012, 0x8012, 1, 1, 1),
    ("zrangebyscore", 0x8012, 0x8012, 1, 1, 1),
    ("zrangestore", 0x8014, 0x8014, 1, 2, 1),
    ("zrank", 0x4012, 0x4012, 1, 1, 1),
    ("zrem", 0x4014, 0x4014, 1, 1, 1),
    ("zremrangebylex", 0x8014, 0x8014, 1, 1, 1),
    ("zremrangebyrank", 0x8014, 0x8014, 1, 1, 1),
    ("zremrangebyscore", 0x8014, 0x8014, 1, 1, 1),
    ("zrevrange", 0x8012, 0x8012, 1, 1, 1),
    ("zrevrangebylex", 0x8012, 0x8012, 1, 1, 1),
    ("zrevrangebyscore", 0x8012, 0x8012, 1, 1, 1),
    ("zrevrank", 0x4012, 0x4012, 1, 1, 1),
    ("zscan", 0x8012, 0x8012, 1, 1, 1),
    ("zscore", 0x4012, 0x4012, 1, 1, 1),
    ("zunion", 0x8012, 0x8012, -1, 0, 0),
    ("zunionstore", 0x8014, 0x8014, 1, 1, 1),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: Option<&[&str]>, deny: &[&str]) -> Policy {
        Policy::build(&CommandRules {
            allow: allow.map(|a| a.iter().map(|s| (*s).to_owned()).collect()),
            deny: deny.iter().map(|s| (*s).to_owned()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn categories_allow_and_deny_as_redis_defines_them() {
        let p = policy(Some(&["@read", "@connection", "SET"]), &["@dangerous"]);
        for ok in [
            "GET", "get", "MGET", "HGETALL", "SET", "PING", "AUTH", "HELLO",
        ] {
            assert_eq!(p.check(ok.as_bytes()), Ok(()), "{ok}");
        }
        assert_eq!(p.check(b"DEL"), Err("no allow rule matched".to_owned()));
        assert_eq!(p.check(b"FLUSHALL"), Err("deny @dangerous".to_owned()));
        assert_eq!(p.check(b"KEYS"), Err("deny @dangerous".to_owned()));
        // CONFIG has dangerous subcommands: denied whole by @dangerous; and not all of it is
        // @read, so @read does not allow it.
        assert_eq!(p.check(b"CONFIG"), Err("deny @dangerous".to_owned()));
        let reads = policy(Some(&["@read"]), &[]);
        assert!(reads.check(b"CONFIG").is_err());
        assert!(reads.check(b"NOSUCHCMD").is_err());
        let by_name = policy(None, &["FLUSHDB"]);
        assert_eq!(by_name.check(b"flushdb"), Err("deny FLUSHDB".to_owned()));
        assert_eq!(by_name.check(b"FLUSHALL"), Ok(()));
    }

    #[test]
    fn key_counts_follow_the_key_positions() {
        assert_eq!(keys("GET", 2), Some(1));
        assert_eq!(keys("mset", 7), Some(3));
        assert_eq!(keys("DEL", 4), Some(3));
        assert_eq!(keys("PING", 1), Some(0));
        assert_eq!(keys("EVAL", 5), None);
        assert_eq!(keys("NOSUCH", 3), None);
        assert!(COMMANDS.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
    }
}
