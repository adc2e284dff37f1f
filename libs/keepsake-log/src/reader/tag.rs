//! [`Tag`]: which write of a segment object a reader saw, so that a read gets the object it
//! listed (or wrote), never a stray put under the same name since.

/// Which write of an object was seen: a hash of the e-tag the store gave for it (0 when it gave
/// none, or nothing was seen). An object put later under the same name — a writer that was
/// behind, putting its batch into a number compaction freed after the listing — has another, so
/// a read checks that it got the object that was listed, not whatever the name holds now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tag(u64);

impl Tag {
    /// Nothing known: any object is admitted.
    pub const ANY: Tag = Tag(0);

    /// The tag of an e-tag. Quotes and a weak `W/` are left out: S3-compatible stores do not
    /// all spell one e-tag the same way in a listing and in a header.
    pub fn of(e_tag: Option<&str>) -> Tag {
        use std::hash::{Hash, Hasher};
        let Some(e_tag) = e_tag else {
            return Tag::ANY;
        };
        let bare = e_tag.trim();
        let bare = bare.strip_prefix("W/").unwrap_or(bare).trim_matches('"');
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bare.hash(&mut h);
        // 0 means "unknown": an e-tag that hashes to it is taken as 1.
        Tag(h.finish().max(1))
    }

    /// The tag of an object as listed or fetched.
    pub fn of_meta(meta: &object_store::ObjectMeta) -> Tag {
        Tag::of(meta.e_tag.as_deref())
    }

    /// True unless both tags are known and differ (the object read is not the one seen).
    pub fn admits(self, got: Tag) -> bool {
        self == Tag::ANY || got == Tag::ANY || self == got
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_is_one_spelling_of_an_e_tag() {
        let quoted = Tag::of(Some("\"9b2cf535f27731c974343645a3985328\""));
        assert_eq!(quoted, Tag::of(Some("9b2cf535f27731c974343645a3985328")));
        assert_eq!(
            quoted,
            Tag::of(Some("W/\"9b2cf535f27731c974343645a3985328\""))
        );
        assert_ne!(
            quoted,
            Tag::of(Some("\"9b2cf535f27731c974343645a3985329\""))
        );
        assert_ne!(quoted, Tag::ANY);
        assert_eq!(Tag::of(None), Tag::ANY);
        assert!(Tag::ANY.admits(quoted) && quoted.admits(Tag::ANY) && quoted.admits(quoted));
        assert!(!quoted.admits(Tag::of(Some("other"))));
    }
}
