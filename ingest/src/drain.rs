//! Online log template mining, after Drain (He et al., "Drain: An Online Log Parsing Approach
//! with Fixed Depth Tree", ICWS 2017), with bounded memory.
//!
//! A message is split on whitespace; tokens holding a digit are masked to `<*>` up front (ids,
//! counts, durations, addresses). Messages are grouped by service, token count and first token
//! (the fixed-depth part of Drain's tree); within a group the message joins the most similar
//! template (share of positions with equal tokens; masked numbers are equal, a position
//! already generalised to `<*>` does not match a word) if that share reaches the
//! similarity threshold, and the positions that differ become `<*>`. Otherwise it starts a new
//! template, which is reported as new: "a template never seen before" is a signal in itself.
//!
//! Memory is bounded: at most `max_templates` templates (the least recently matched are
//! forgotten first), at most `max_groups_per_length` distinct first tokens per service and
//! length (beyond that the first token is treated as a wildcard), and messages are mined on
//! their first [`MAX_TOKENS`] tokens.

use std::collections::HashMap;

/// Tokens of a message taken into account.
pub const MAX_TOKENS: usize = 64;
const WILDCARD: &str = "<*>";

/// Template mining settings.
#[derive(Debug, Clone, Copy)]
pub struct DrainConfig {
    /// Share of equal tokens needed to join a template, in (0, 1].
    pub similarity: f64,
    /// Templates kept at most.
    pub max_templates: usize,
    /// Distinct first tokens per service and token count before the first token is a wildcard.
    pub max_groups_per_length: usize,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self { similarity: 0.5, max_templates: 10_000, max_groups_per_length: 100 }
    }
}

#[derive(Debug)]
struct Template {
    id: u64,
    tokens: Vec<String>,
    last_used: u64,
    matched: u64,
}

/// The template a message was assigned to.
#[derive(Debug, Clone, PartialEq)]
pub struct Mined {
    /// Stable id of the template (a hash of the service and the first message's masked tokens).
    pub id: u64,
    /// The template text, tokens joined by spaces, variable positions as `<*>`.
    pub template: String,
    /// The template was created by this message.
    pub new: bool,
}

/// An online template miner; see the module docs.
#[derive(Debug)]
pub struct Drain {
    cfg: DrainConfig,
    /// (service, token count, first token or `<*>`) -> template slots.
    groups: HashMap<(String, usize, String), Vec<usize>>,
    /// Distinct first tokens per (service, token count).
    firsts: HashMap<(String, usize), usize>,
    templates: Vec<Option<Template>>,
    free: Vec<usize>,
    live: usize,
    clock: u64,
    evicted: u64,
}

fn mask(token: &str) -> &str {
    if token.bytes().any(|b| b.is_ascii_digit()) {
        WILDCARD
    } else {
        token
    }
}

impl Drain {
    /// A miner with no templates.
    pub fn new(cfg: DrainConfig) -> Self {
        assert!(cfg.similarity > 0.0 && cfg.similarity <= 1.0 && cfg.max_templates > 0, "validated by the config layer");
        Self { cfg, groups: HashMap::new(), firsts: HashMap::new(), templates: Vec::new(), free: Vec::new(), live: 0, clock: 0, evicted: 0 }
    }

    /// Templates currently kept.
    pub fn templates(&self) -> usize {
        self.live
    }

    /// Templates forgotten to stay within `max_templates`.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Assigns `message` of `service` to a template, creating or generalising one.
    pub fn mine(&mut self, service: &str, message: &str) -> Mined {
        self.clock += 1;
        let tokens: Vec<&str> = message.split_whitespace().take(MAX_TOKENS).map(mask).collect();
        let len = tokens.len();
        let first = tokens.first().copied().unwrap_or("");
        let group_key = {
            let exact = (service.to_string(), len, first.to_string());
            if self.groups.contains_key(&exact) || first == WILDCARD {
                exact
            } else {
                let n = self.firsts.entry((service.to_string(), len)).or_insert(0);
                if *n < self.cfg.max_groups_per_length {
                    *n += 1;
                    exact
                } else {
                    (service.to_string(), len, WILDCARD.to_string())
                }
            }
        };

        // Best template in the group.
        let mut best: Option<(usize, f64)> = None;
        if let Some(slots) = self.groups.get(&group_key) {
            for &s in slots {
                let t = self.templates[s].as_ref().expect("group slots are live");
                // Masked numbers compare equal (`<*>` on both sides); a position generalised
                // to `<*>` does not match a word.
                let same = t.tokens.iter().zip(&tokens).filter(|(a, b)| a.as_str() == **b).count();
                let sim = if len == 0 { 1.0 } else { same as f64 / len as f64 };
                if best.is_none_or(|(_, b)| sim > b) {
                    best = Some((s, sim));
                }
            }
        }
        let clock = self.clock;
        if let Some((s, sim)) = best {
            if sim >= self.cfg.similarity {
                let t = self.templates[s].as_mut().expect("live");
                for (a, b) in t.tokens.iter_mut().zip(&tokens) {
                    if a != b && a != WILDCARD {
                        *a = WILDCARD.to_string();
                    }
                }
                t.last_used = clock;
                t.matched += 1;
                return Mined { id: t.id, template: t.tokens.join(" "), new: false };
            }
        }

        // A new template.
        if self.live >= self.cfg.max_templates {
            self.evict();
        }
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(service.as_bytes());
        h.update(&[0]);
        for t in &tokens {
            h.update(t.as_bytes());
            h.update(&[0]);
        }
        let id = h.digest();
        let template = Template { id, tokens: tokens.iter().map(|t| t.to_string()).collect(), last_used: clock, matched: 1 };
        let text = template.tokens.join(" ");
        let slot = match self.free.pop() {
            Some(s) => {
                self.templates[s] = Some(template);
                s
            }
            None => {
                self.templates.push(Some(template));
                self.templates.len() - 1
            }
        };
        self.live += 1;
        self.groups.entry(group_key).or_default().push(slot);
        Mined { id, template: text, new: true }
    }

    /// Forgets the least recently used tenth of the templates.
    fn evict(&mut self) {
        let mut used: Vec<u64> = self.templates.iter().flatten().map(|t| t.last_used).collect();
        let k = (used.len() / 10).max(1).min(used.len() - 1);
        let (_, cut, _) = used.select_nth_unstable(k);
        let cut = *cut;
        let mut gone = Vec::new();
        for (i, t) in self.templates.iter_mut().enumerate() {
            if t.as_ref().is_some_and(|t| t.last_used < cut) {
                *t = None;
                gone.push(i);
            }
        }
        if gone.is_empty() {
            return;
        }
        self.evicted += gone.len() as u64;
        self.live -= gone.len();
        let gone_set: std::collections::HashSet<usize> = gone.iter().copied().collect();
        self.groups.retain(|_, slots| {
            slots.retain(|s| !gone_set.contains(s));
            !slots.is_empty()
        });
        self.free.extend(gone);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_differing_in_variables_share_a_template() {
        let mut d = Drain::new(DrainConfig::default());
        let a = d.mine("api", "payment 4411 accepted in 120 ms");
        let b = d.mine("api", "payment 4412 accepted in 95 ms");
        assert!(a.new && !b.new);
        assert_eq!(a.id, b.id);
        assert_eq!(b.template, "payment <*> accepted in <*> ms");
    }

    #[test]
    fn a_different_message_is_a_new_template_and_variable_words_generalise() {
        let mut d = Drain::new(DrainConfig::default());
        let a = d.mine("api", "user alice logged in from web");
        let b = d.mine("api", "user bob logged in from web");
        assert_eq!(a.id, b.id);
        assert_eq!(b.template, "user <*> logged in from web");
        let c = d.mine("api", "connection refused by upstream database");
        assert!(c.new && c.id != a.id);
        // The same text in another service is that service's own template.
        let e = d.mine("billing", "user carol logged in from web");
        assert!(e.new && e.id != a.id);
        assert_eq!(d.templates(), 3);
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_unique_messages() {
        let mut d = Drain::new(DrainConfig { max_templates: 100, ..Default::default() });
        // Every message has its own words (letters only, so nothing is masked).
        let word = |mut n: usize| {
            let mut w = String::new();
            loop {
                w.push((b'a' + (n % 26) as u8) as char);
                n /= 26;
                if n == 0 {
                    return w;
                }
            }
        };
        for i in 0..20_000usize {
            let msg: Vec<String> = (0..4).map(|k| word(i * 4 + k)).collect();
            d.mine("svc", &msg.join(" "));
            assert!(d.templates() <= 100);
        }
        assert!(d.evicted() > 0);
        // Still works after evictions.
        let a = d.mine("svc", "disk full on volume data");
        let b = d.mine("svc", "disk full on volume logs");
        assert_eq!(a.id, b.id);
    }

    #[test]
    fn empty_and_huge_messages_do_not_panic() {
        let mut d = Drain::new(DrainConfig::default());
        d.mine("", "");
        d.mine("s", &"x ".repeat(100_000));
        d.mine("s", "\u{0} \u{feff} ü");
    }
}
