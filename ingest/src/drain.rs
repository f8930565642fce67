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

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Template {
    id: u64,
    tokens: Vec<String>,
    /// `tokens` joined by spaces, kept in step with them.
    text: String,
    last_used: u64,
}

/// The template a message was assigned to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mined<'a> {
    /// Stable id of the template (a hash of the service and the first message's masked tokens).
    pub id: u64,
    /// The template text, tokens joined by spaces, variable positions as `<*>`.
    pub template: &'a str,
    /// The template was created by this message.
    pub new: bool,
}

/// A miner's templates and groups, as a checkpoint holds them (see [`Drain::export`]).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DrainState {
    groups: Vec<(u64, Vec<usize>)>,
    firsts: Vec<(u64, usize)>,
    templates: Vec<Option<Template>>,
    free: Vec<usize>,
    live: usize,
    clock: u64,
    evicted: u64,
}

/// A 64-bit key of string parts (no allocation per message to look a group up).
fn key<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for p in parts {
        h.update(p);
        h.update(&[0]);
    }
    h.digest()
}

/// An online template miner; see the module docs.
#[derive(Debug)]
pub struct Drain {
    cfg: DrainConfig,
    /// Key of (service, token count, first token or `<*>`) -> template slots. A collision of
    /// 64-bit keys would only widen the search within a group; similarity still decides.
    groups: HashMap<u64, Vec<usize>>,
    /// Distinct first tokens per key of (service, token count).
    firsts: HashMap<u64, usize>,
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

    /// Everything the miner has learned, for a checkpoint.
    pub fn export(&self) -> DrainState {
        DrainState {
            groups: self.groups.iter().map(|(k, v)| (*k, v.clone())).collect(),
            firsts: self.firsts.iter().map(|(k, v)| (*k, *v)).collect(),
            templates: self.templates.clone(),
            free: self.free.clone(),
            live: self.live,
            clock: self.clock,
            evicted: self.evicted,
        }
    }

    /// Replaces what the miner knows with a checkpoint's state. Slots out of range (a damaged
    /// state) are dropped rather than trusted.
    pub fn import(&mut self, st: DrainState) {
        let n = st.templates.len();
        self.groups = st.groups.into_iter().map(|(k, v)| (k, v.into_iter().filter(|i| *i < n).collect())).collect();
        self.firsts = st.firsts.into_iter().collect();
        self.free = st.free.into_iter().filter(|i| *i < n).collect();
        self.templates = st.templates;
        self.live = self.templates.iter().filter(|t| t.is_some()).count();
        self.clock = st.clock;
        self.evicted = st.evicted;
        let _ = st.live;
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
    pub fn mine(&mut self, service: &str, message: &str) -> Mined<'_> {
        self.clock += 1;
        let tokens: Vec<&str> = message.split_whitespace().take(MAX_TOKENS).map(mask).collect();
        let len = tokens.len();
        let first = tokens.first().copied().unwrap_or("");
        let len_bytes = (len as u64).to_le_bytes();
        let group_key = {
            let exact = key([service.as_bytes(), &len_bytes, first.as_bytes()]);
            if self.groups.contains_key(&exact) || first == WILDCARD {
                exact
            } else {
                let n = self.firsts.entry(key([service.as_bytes(), &len_bytes])).or_insert(0);
                if *n < self.cfg.max_groups_per_length {
                    *n += 1;
                    exact
                } else {
                    key([service.as_bytes(), &len_bytes, WILDCARD.as_bytes()])
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
                let mut changed = false;
                for (a, b) in t.tokens.iter_mut().zip(&tokens) {
                    if a != b && a != WILDCARD {
                        *a = WILDCARD.to_string();
                        changed = true;
                    }
                }
                if changed {
                    t.text = t.tokens.join(" ");
                }
                t.last_used = clock;
                return Mined { id: t.id, template: &t.text, new: false };
            }
        }

        // A new template.
        if self.live >= self.cfg.max_templates {
            self.evict();
        }
        let id = key(std::iter::once(service.as_bytes()).chain(tokens.iter().map(|t| t.as_bytes())));
        let template = Template { id, tokens: tokens.iter().map(|t| t.to_string()).collect(), text: tokens.join(" "), last_used: clock };
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
        let t = self.templates[slot].as_ref().expect("just stored");
        Mined { id, template: &t.text, new: true }
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

    /// (id, template, new), owned, so several results can be compared.
    fn mine(d: &mut Drain, service: &str, message: &str) -> (u64, String, bool) {
        let m = d.mine(service, message);
        (m.id, m.template.to_string(), m.new)
    }

    #[test]
    fn messages_differing_in_variables_share_a_template() {
        let mut d = Drain::new(DrainConfig::default());
        let a = mine(&mut d, "api", "payment 4411 accepted in 120 ms");
        let b = mine(&mut d, "api", "payment 4412 accepted in 95 ms");
        assert!(a.2 && !b.2);
        assert_eq!(a.0, b.0);
        assert_eq!(b.1, "payment <*> accepted in <*> ms");
    }

    #[test]
    fn a_different_message_is_a_new_template_and_variable_words_generalise() {
        let mut d = Drain::new(DrainConfig::default());
        let a = mine(&mut d, "api", "user alice logged in from web");
        let b = mine(&mut d, "api", "user bob logged in from web");
        assert_eq!(a.0, b.0);
        assert_eq!(b.1, "user <*> logged in from web");
        let c = mine(&mut d, "api", "connection refused by upstream database");
        assert!(c.2 && c.0 != a.0);
        // The same text in another service is that service's own template.
        let e = mine(&mut d, "billing", "user carol logged in from web");
        assert!(e.2 && e.0 != a.0);
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
        let a = mine(&mut d, "svc", "disk full on volume data");
        let b = mine(&mut d, "svc", "disk full on volume logs");
        assert_eq!(a.0, b.0);
    }

    #[test]
    fn empty_and_huge_messages_do_not_panic() {
        let mut d = Drain::new(DrainConfig::default());
        d.mine("", "");
        d.mine("s", &"x ".repeat(100_000));
        d.mine("s", "\u{0} \u{feff} ü");
    }
}
