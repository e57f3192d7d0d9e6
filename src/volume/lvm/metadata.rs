//! The volume group as its text metadata describes it: the VG, its
//! physical volumes and its logical volumes with their segments.
//!
//! Sizes and offsets are in 512-byte sectors where LVM2 writes them so
//! (`extent_size`, `pe_start`, `dev_size`) and in extents elsewhere; the
//! planning functions ([`super::plan`]) turn them into bytes.

use std::collections::BTreeSet;
use std::path::Path;

use super::config::{self, Entry, Lookup, Value};
use crate::error::{Error, Result, Step};

/// The most stripes a segment may have (LVM2's own limit).
pub const MAX_STRIPES: usize = 128;

/// A volume group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeGroup {
    /// Its name (`rl`, `ubuntu-vg`).
    pub name: String,
    /// Its UUID, dashed.
    pub id: String,
    /// The metadata's sequence number: the highest is the newest.
    pub seqno: u64,
    /// The size of an extent in 512-byte sectors.
    pub extent_size: u64,
    /// Its physical volumes, in the metadata's order.
    pub pvs: Vec<Pv>,
    /// Its logical volumes, in the metadata's order.
    pub lvs: Vec<Lv>,
}

/// A physical volume as the VG metadata lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pv {
    /// Its name inside the metadata (`pv0`, `pv1`, ...), which segments use.
    pub name: String,
    /// Its UUID, dashed: the one in its label.
    pub id: String,
    /// Where its first extent starts, in sectors from the PV's start.
    pub pe_start: u64,
    /// How many extents it has.
    pub pe_count: u64,
    /// Its size in sectors when the metadata was written (0 if not given).
    pub dev_size: u64,
    /// Whether LVM2 marked it missing (`flags = ["MISSING"]`).
    pub missing: bool,
}

/// A logical volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lv {
    /// Its name (`root`, `ubuntu-lv`).
    pub name: String,
    /// Its UUID, dashed.
    pub id: String,
    /// Its status flags (`READ`, `WRITE`, `VISIBLE`, ...).
    pub status: Vec<String>,
    /// Whether it is a volume users see (not a hidden part of another).
    pub visible: bool,
    /// Its segments, sorted and contiguous from extent 0.
    pub segments: Vec<Segment>,
}

/// One segment: a run of the LV's extents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The LV extent it starts at.
    pub start_extent: u64,
    /// How many extents it covers.
    pub extent_count: u64,
    /// How those extents are stored.
    pub kind: SegmentKind,
}

/// How a segment's extents are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentKind {
    /// `striped`: over `stripe_count` PVs (1 is a linear segment), each
    /// stripe a (PV name, first PV extent).
    Striped {
        /// The number of stripes.
        stripe_count: u32,
        /// Where each stripe starts: PV name and PV extent.
        stripes: Vec<(String, u64)>,
    },
    /// `snapshot`: the copy-on-write store of a snapshot of `origin`.
    Snapshot {
        /// The LV the snapshot is of.
        origin: String,
    },
    /// Any other segment type (`raid1`, `thin`, `thin-pool`, `cache`,
    /// `mirror`, ...), by its name.
    Other(String),
}

impl Lv {
    /// Its size in extents.
    pub fn extent_count(&self) -> u64 {
        self.segments.iter().map(|s| s.extent_count).sum()
    }
}

impl VolumeGroup {
    /// Parses LVM2 text metadata (as it is in a metadata area, or as
    /// `vgcfgbackup` writes it); errors name `path`.
    pub fn parse(text: &[u8], path: &Path) -> Result<VolumeGroup> {
        let refuse = |reason: &dyn std::fmt::Display| {
            Error::invalid(
                Step::Probe,
                path,
                format!("the LVM2 metadata is invalid: {reason}"),
            )
        };
        let top = config::parse(text).map_err(|e| refuse(&e))?;
        from_entries(&top).map_err(|e| refuse(&e))
    }

    /// The logical volume called `name`.
    pub fn lv(&self, name: &str) -> Option<&Lv> {
        self.lvs.iter().find(|l| l.name == name)
    }

    /// The physical volume called `name` in the metadata (`pv0`).
    pub fn pv(&self, name: &str) -> Option<&Pv> {
        self.pvs.iter().find(|p| p.name == name)
    }

    /// The physical volume whose UUID is `id` (dashes do not matter).
    pub fn pv_by_id(&self, id: &str) -> Option<&Pv> {
        self.pvs.iter().find(|p| same_id(&p.id, id))
    }

    /// The size of an extent in bytes.
    pub fn extent_bytes(&self) -> u64 {
        self.extent_size * 512
    }
}

/// Whether two UUIDs are the same, dashes aside.
pub(crate) fn same_id(a: &str, b: &str) -> bool {
    a.bytes()
        .filter(|&c| c != b'-')
        .eq(b.bytes().filter(|&c| c != b'-'))
}

type R<T> = std::result::Result<T, String>;

/// What a message is about; formatted only when there is an error.
type What<'a> = &'a dyn std::fmt::Display;

/// Where in the volume group a value is.
#[derive(Clone, Copy)]
struct At<'a> {
    vg: &'a str,
    part: Option<(&'static str, &'a str)>,
    segment: Option<u64>,
}

impl std::fmt::Display for At<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "volume group {}", self.vg)?;
        if let Some((kind, name)) = self.part {
            write!(f, ": {kind} {name}")?;
        }
        if let Some(n) = self.segment {
            write!(f, ": segment {n}")?;
        }
        Ok(())
    }
}

/// A string value with its escapes removed (one allocation).
fn owned(raw: &[u8]) -> String {
    String::from_utf8(config::unescape(raw))
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn text(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

fn string(s: &[Entry<'_>], key: &str, what: What<'_>) -> R<String> {
    match s.value(key) {
        Some(Value::Str(raw)) => String::from_utf8(config::unescape(raw))
            .map_err(|_| format!("{what}: `{key}` is not UTF-8")),
        Some(_) => Err(format!("{what}: `{key}` is not a string")),
        None => Err(format!("{what} has no `{key}`")),
    }
}

fn number(s: &[Entry<'_>], key: &str, what: What<'_>) -> R<u64> {
    match s.value(key) {
        Some(Value::Int(v)) => {
            u64::try_from(*v).map_err(|_| format!("{what}: `{key}` is negative"))
        }
        Some(_) => Err(format!("{what}: `{key}` is not an integer")),
        None => Err(format!("{what} has no `{key}`")),
    }
}

fn strings(s: &[Entry<'_>], key: &str, what: What<'_>) -> R<Vec<String>> {
    match s.value(key) {
        None => Ok(Vec::new()),
        Some(Value::List(items)) => items
            .iter()
            .map(|v| match v {
                Value::Str(raw) => Ok(owned(raw)),
                _ => Err(format!(
                    "{what}: `{key}` holds something other than strings"
                )),
            })
            .collect(),
        Some(_) => Err(format!("{what}: `{key}` is not a list")),
    }
}

fn section<'e, 'a>(s: &'e [Entry<'a>], key: &str) -> R<Option<&'e [Entry<'a>]>> {
    match s.value(key) {
        None => Ok(None),
        Some(Value::Section(inner)) => Ok(Some(inner)),
        Some(_) => Err(format!("`{key}` is not a section")),
    }
}

/// The sections of `s`, each with its name; names must be unique.
fn subsections<'e, 'a>(s: &'e [Entry<'a>], what: &str) -> R<Vec<(String, &'e [Entry<'a>])>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for e in s {
        if let Value::Section(inner) = &e.value {
            let name = text(e.key);
            if !seen.insert(e.key) {
                return Err(format!("{what} {name} appears twice"));
            }
            out.push((name, &inner[..]));
        }
    }
    Ok(out)
}

/// A VG or LV name as LVM2 allows it (the parser already kept to its
/// characters): not empty, not `.`/`..`, not starting with `-`.
fn check_name(name: &str, what: &str) -> R<()> {
    if name.is_empty() || name == "." || name == ".." || name.starts_with('-') {
        return Err(format!("{what} name {name:?} is not a valid LVM2 name"));
    }
    Ok(())
}

/// The volume group of a parsed text's top-level entries.
fn from_entries(top: &[Entry<'_>]) -> R<VolumeGroup> {
    if let Ok(contents) = string(top, "contents", &"the metadata")
        && contents != "Text Format Volume Group"
    {
        return Err(format!("it holds {contents:?}, not a volume group"));
    }
    if let Some(v) = top.value("version")
        && *v != Value::Int(1)
    {
        return Err("unknown metadata version (diskmount reads version 1)".into());
    }
    let groups = subsections(top, "volume group")?;
    let [(name, vg)] = &groups[..] else {
        return Err(format!(
            "it describes {} volume groups; LVM2 writes exactly one",
            groups.len()
        ));
    };
    check_name(name, "the volume group")?;
    let what = At {
        vg: name,
        part: None,
        segment: None,
    };
    let extent_size = number(vg, "extent_size", &what)?;
    if extent_size == 0 || extent_size > 1 << 32 {
        return Err(format!(
            "{what}: extent size {extent_size} sectors is out of range"
        ));
    }
    let mut pvs = Vec::new();
    if let Some(list) = section(vg, "physical_volumes")? {
        for (pv_name, pv) in subsections(list, "physical volume")? {
            let what = At {
                part: Some(("physical volume", &pv_name)),
                ..what
            };
            let pv = Pv {
                id: string(pv, "id", &what)?,
                pe_start: number(pv, "pe_start", &what)?,
                pe_count: number(pv, "pe_count", &what)?,
                dev_size: number(pv, "dev_size", &what).unwrap_or(0),
                missing: strings(pv, "flags", &what)?.iter().any(|f| f == "MISSING"),
                name: String::new(),
            };
            pvs.push(Pv {
                name: pv_name,
                ..pv
            });
        }
    }
    let mut lvs = Vec::new();
    if let Some(list) = section(vg, "logical_volumes")? {
        for (lv_name, lv) in subsections(list, "logical volume")? {
            check_name(&lv_name, "a logical volume")?;
            lvs.push(parse_lv(lv_name, lv, &pvs, name)?);
        }
    }
    check_no_shared_extents(&lvs, &what)?;
    Ok(VolumeGroup {
        id: string(vg, "id", &what)?,
        seqno: number(vg, "seqno", &what)?,
        name: name.clone(),
        extent_size,
        pvs,
        lvs,
    })
}

/// No two pieces of the LVs' striped segments on one PV share an extent:
/// LVM2 never allocates one twice, and two LVs on the same bytes would be
/// two filesystems written at once over each other (a mount of both, by
/// an fstab naming both, corrupts the image).
fn check_no_shared_extents(lvs: &[Lv], what: What<'_>) -> R<()> {
    let mut pieces: Vec<(&str, u64, u64, &str)> = Vec::new();
    for lv in lvs {
        for seg in &lv.segments {
            if let SegmentKind::Striped {
                stripe_count,
                stripes,
            } = &seg.kind
            {
                let each = seg.extent_count / u64::from((*stripe_count).max(1));
                for (pv, at) in stripes {
                    let end = at
                        .checked_add(each)
                        .ok_or_else(|| format!("{what}: {}: a stripe is too long", lv.name))?;
                    pieces.push((pv.as_str(), *at, end, lv.name.as_str()));
                }
            }
        }
    }
    pieces.sort_unstable();
    for w in pieces.windows(2) {
        let ((pv, _, end, a), (pv2, start, _, b)) = (w[0], w[1]);
        if pv == pv2 && start < end {
            return Err(format!(
                "{what}: logical volumes {a} and {b} share extent {start} of physical volume {pv}"
            ));
        }
    }
    Ok(())
}

fn parse_lv(name: String, lv: &[Entry<'_>], pvs: &[Pv], vg: &str) -> R<Lv> {
    let what = &At {
        vg,
        part: Some(("logical volume", &name)),
        segment: None,
    };
    let status = strings(lv, "status", what)?;
    let count = number(lv, "segment_count", what)?;
    let mut segments = Vec::new();
    for e in lv {
        let Value::Section(seg) = &e.value else {
            continue;
        };
        let Some(n) = e
            .key
            .strip_prefix(b"segment")
            .and_then(|n| std::str::from_utf8(n).ok())
            .and_then(|n| n.parse::<u64>().ok())
        else {
            return Err(format!("{what}: unknown section {}", text(e.key)));
        };
        let what = At {
            segment: Some(n),
            ..*what
        };
        segments.push((n, parse_segment(seg, pvs, &what)?));
    }
    if segments.len() as u64 != count {
        return Err(format!(
            "{what}: segment_count is {count}, but it has {} segments",
            segments.len()
        ));
    }
    segments.sort_by_key(|(_, s)| s.start_extent);
    let mut next = 0u64;
    for (n, s) in &segments {
        if s.start_extent != next {
            return Err(format!(
                "{what}: segment {n} starts at extent {}, not {next} (a gap or an overlap)",
                s.start_extent
            ));
        }
        next = s
            .start_extent
            .checked_add(s.extent_count)
            .ok_or_else(|| format!("{what}: segment {n} is too long"))?;
    }
    Ok(Lv {
        id: string(lv, "id", what)?,
        visible: status.iter().any(|s| s == "VISIBLE"),
        status,
        name,
        segments: segments.into_iter().map(|(_, s)| s).collect(),
    })
}

fn parse_segment(seg: &[Entry<'_>], pvs: &[Pv], what: What<'_>) -> R<Segment> {
    let start_extent = number(seg, "start_extent", what)?;
    let extent_count = number(seg, "extent_count", what)?;
    if extent_count == 0 {
        return Err(format!("{what} has no extents"));
    }
    let ty = string(seg, "type", what)?;
    let kind = match ty.as_str() {
        "striped" => {
            let stripe_count = number(seg, "stripe_count", what)?;
            let Some(Value::List(items)) = seg.value("stripes") else {
                return Err(format!("{what} has no list of `stripes`"));
            };
            if stripe_count == 0 || stripe_count as usize > MAX_STRIPES {
                return Err(format!("{what}: {stripe_count} stripes is out of range"));
            }
            if items.len() as u64 != 2 * stripe_count {
                return Err(format!(
                    "{what}: {stripe_count} stripes, but `stripes` has {} entries",
                    items.len()
                ));
            }
            if extent_count % stripe_count != 0 {
                return Err(format!(
                    "{what}: {extent_count} extents do not divide into {stripe_count} stripes"
                ));
            }
            let mut stripes = Vec::new();
            for pair in items.chunks_exact(2) {
                let (Value::Str(pv), Value::Int(at)) = (&pair[0], &pair[1]) else {
                    return Err(format!(
                        "{what}: `stripes` is not pairs of PV name and extent"
                    ));
                };
                let pv = owned(pv);
                if !pvs.iter().any(|p| p.name == pv) {
                    return Err(format!(
                        "{what} is on {pv}, which the volume group does not list"
                    ));
                }
                let at = u64::try_from(*at).map_err(|_| format!("{what}: a negative extent"))?;
                stripes.push((pv, at));
            }
            SegmentKind::Striped {
                stripe_count: stripe_count as u32,
                stripes,
            }
        }
        "snapshot" => SegmentKind::Snapshot {
            origin: string(seg, "origin", what)?,
        },
        _ => SegmentKind::Other(ty),
    };
    Ok(Segment {
        start_extent,
        extent_count,
        kind,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Metadata as LVM2 2.03 writes it in a metadata area: a VG of two
    /// PVs with a linear, a two-segment, a striped and a thin LV.
    pub(crate) const SAMPLE: &str = r#"rl {
id = "wUXyAl-fHZu-90lC-lE7K-hcGX-tSfC-2kDt6Y"
seqno = 4
format = "lvm2"
status = ["RESIZEABLE", "READ", "WRITE"]
flags = []
extent_size = 8192
max_lv = 0
max_pv = 0
metadata_copies = 0

physical_volumes {

pv0 {
id = "UiHoyR-g13L-BDYy-Wnxp-iytp-5F0w-m3tXDf"
device = "/dev/loop0"

status = ["ALLOCATABLE"]
flags = []
dev_size = 262144
pe_start = 2048
pe_count = 31
}

pv1 {
id = "AAAAAA-g13L-BDYy-Wnxp-iytp-5F0w-m3tXDf"
device = "/dev/loop1"
status = ["ALLOCATABLE"]
flags = ["MISSING"]
dev_size = 262144
pe_start = 2048
pe_count = 31
}
}

logical_volumes {

root {
id = "r00000-0000-0000-0000-0000-0000-000000"
status = ["READ", "WRITE", "VISIBLE"]
flags = []
segment_count = 1

segment1 {
start_extent = 0
extent_count = 10
type = "striped"
stripe_count = 1	# linear

stripes = [
"pv0", 0
]
}
}

data {
id = "d00000-0000-0000-0000-0000-0000-000000"
status = ["READ", "WRITE", "VISIBLE"]
flags = []
segment_count = 2

segment2 {
start_extent = 3
extent_count = 2
type = "striped"
stripe_count = 1
stripes = ["pv0", 20]
}
segment1 {
start_extent = 0
extent_count = 3
type = "striped"
stripe_count = 1
stripes = ["pv0", 10]
}
}

wide {
id = "w00000-0000-0000-0000-0000-0000-000000"
status = ["READ", "WRITE", "VISIBLE"]
segment_count = 1
segment1 {
start_extent = 0
extent_count = 4
type = "striped"
stripe_count = 2
stripe_size = 128
stripes = ["pv0", 25, "pv1", 0]
}
}

thin {
id = "t00000-0000-0000-0000-0000-0000-000000"
status = ["READ", "WRITE", "VISIBLE"]
segment_count = 1
segment1 {
start_extent = 0
extent_count = 4
type = "thin"
thin_pool = "pool"
transaction_id = 1
device_id = 1
}
}
}

}
# Generated by LVM2 version 2.03.16(2) (2022-05-18): Wed Dec  2 07:11:49 2026

contents = "Text Format Volume Group"
version = 1

description = ""

creation_host = "vm"	# Linux vm
creation_time = 1796195509	# Wed Dec  2 07:11:49 2026
"#;

    pub(crate) fn sample() -> VolumeGroup {
        VolumeGroup::parse(SAMPLE.as_bytes(), Path::new("/img")).unwrap()
    }

    #[test]
    fn parses_the_volume_group() {
        let vg = sample();
        assert_eq!(vg.name, "rl");
        assert_eq!(vg.seqno, 4);
        assert_eq!(vg.extent_size, 8192);
        assert_eq!(vg.pvs.len(), 2);
        assert_eq!(vg.pvs[0].name, "pv0");
        assert_eq!(vg.pvs[0].pe_start, 2048);
        assert_eq!(vg.pvs[0].pe_count, 31);
        assert!(!vg.pvs[0].missing && vg.pvs[1].missing);
        assert!(vg.pv_by_id("UiHoyRg13LBDYyWnxpiytp5F0wm3tXDf").is_some());
        let names: Vec<_> = vg.lvs.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["root", "data", "wide", "thin"]);
        let data = vg.lv("data").unwrap();
        assert!(data.visible);
        assert_eq!(data.extent_count(), 5);
        assert_eq!(data.segments[0].start_extent, 0);
        assert_eq!(
            data.segments[1].kind,
            SegmentKind::Striped {
                stripe_count: 1,
                stripes: vec![("pv0".into(), 20)]
            }
        );
        assert_eq!(
            vg.lv("thin").unwrap().segments[0].kind,
            SegmentKind::Other("thin".into())
        );
    }

    fn refusal(text: &str) -> String {
        VolumeGroup::parse(text.as_bytes(), Path::new("/img"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn inconsistent_metadata_is_refused_with_the_reason() {
        for (from, to, why) in [
            (
                "segment_count = 2",
                "segment_count = 3",
                "segment_count is 3, but it has 2",
            ),
            (
                "start_extent = 3",
                "start_extent = 4",
                "segment 2 starts at extent 4, not 3",
            ),
            (
                "\"pv0\", 20",
                "\"pv7\", 20",
                "is on pv7, which the volume group does not list",
            ),
            (
                "stripe_count = 2",
                "stripe_count = 3",
                "3 stripes, but `stripes` has 4 entries",
            ),
            (
                "extent_size = 8192",
                "extent_size = 0",
                "extent size 0 sectors is out of range",
            ),
            (
                "extent_size = 8192",
                "",
                "volume group rl has no `extent_size`",
            ),
            (
                "pe_start = 2048\npe_count = 31\n}\n\npv1",
                "pe_start = -1\npe_count = 31\n}\n\npv1",
                "`pe_start` is negative",
            ),
            ("version = 1", "version = 2", "unknown metadata version"),
            ("data {", "-data {", "is not a valid LVM2 name"),
            ("thin {", "root {", "logical volume root appears twice"),
            (
                "}\n# Generated",
                "}\nother { }\n# Generated",
                "describes 2 volume groups",
            ),
            (
                "extent_count = 10",
                "extent_count = 0",
                "segment 1 has no extents",
            ),
            // Two LVs on the same bytes.
            (
                "\"pv0\", 10",
                "\"pv0\", 5",
                "logical volumes root and data share extent 5 of physical volume pv0",
            ),
        ] {
            assert!(SAMPLE.contains(from), "{from}");
            let err = refusal(&SAMPLE.replacen(from, to, 1));
            assert!(err.contains(why), "{from} -> {to}: {err}");
            assert!(
                err.starts_with("probe: /img: the LVM2 metadata is invalid"),
                "{err}"
            );
        }
        assert!(refusal("rl {").contains("line 1: a section is not closed"));
    }

    #[test]
    fn a_huge_segment_count_costs_nothing() {
        let text = SAMPLE.replacen(
            "segment_count = 1",
            "segment_count = 9223372036854775807",
            1,
        );
        assert!(refusal(&text).contains("but it has 1 segments"));
    }
}
