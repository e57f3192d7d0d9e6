//! `inspect`'s LVM part: the volume groups and logical volumes found on
//! the disk by diskmount's own reader (never the host's LVM tools), as
//! `"volumes"` in `--json` and as a table (docs/cli.md).

use std::fs::File;
use std::path::Path;

use diskmount::fs::{Detected, probe_at};
use diskmount::partition::PartitionTable;
use diskmount::volume::lvm::{LvReader, discover};
use serde::Serialize;

/// One logical volume, as `--json` prints it.
#[derive(Serialize)]
pub struct Volume {
    vg: String,
    lv: String,
    size: u64,
    segments: usize,
    fstype: Option<String>,
    label: Option<String>,
    vg_uuid: String,
    uuid: String,
    /// The segment types (`striped`, `thin`, ...), one per segment.
    segment_types: Vec<String>,
    /// The partitions holding the PVs it uses (`null`: a whole-disk PV).
    pvs: Vec<Option<u32>>,
    /// Whether `--partition lv=VG/LV` can map it here, and if not why.
    mappable: bool,
    reason: Option<String>,
}

/// The visible LVs of every VG on `device`.
pub fn volumes(
    device: &File,
    path: &Path,
    size: u64,
    table: Option<&PartitionTable>,
) -> Vec<Volume> {
    let found = discover(device, path, size, table);
    let mut out = Vec::new();
    for group in found.volume_groups() {
        for lv in group.vg.lvs.iter().filter(|l| l.visible) {
            let placed = group.place(&lv.name, path);
            let (fstype, label, pvs, reason) = match &placed {
                Ok(pieces) => {
                    let r = LvReader::new(device, pieces);
                    let total = pieces.iter().map(|p| p.len).sum();
                    let (f, l) = match probe_at(&r, 0, total).unwrap_or(Detected::Unknown) {
                        Detected::Filesystem { fstype, label } => (Some(fstype.to_string()), label),
                        Detected::Other(what) => (
                            Some(
                                what.trim_start_matches("an ")
                                    .trim_start_matches("a ")
                                    .to_string(),
                            ),
                            None,
                        ),
                        _ => (None, None),
                    };
                    let mut pvs = Vec::new();
                    for p in pieces {
                        let at = group.found(&p.pv).and_then(|f| f.partition);
                        if !pvs.contains(&at) {
                            pvs.push(at);
                        }
                    }
                    (f, l, pvs, None)
                }
                Err(e) => (None, None, Vec::new(), Some(e.to_string())),
            };
            out.push(Volume {
                vg: group.vg.name.clone(),
                lv: lv.name.clone(),
                size: lv.extent_count().saturating_mul(group.vg.extent_bytes()),
                segments: lv.segments.len(),
                fstype,
                label,
                vg_uuid: group.vg.id.clone(),
                uuid: lv.id.clone(),
                segment_types: lv
                    .segments
                    .iter()
                    .map(|s| match &s.kind {
                        diskmount::volume::lvm::SegmentKind::Striped { .. } => "striped".into(),
                        diskmount::volume::lvm::SegmentKind::Snapshot { .. } => "snapshot".into(),
                        diskmount::volume::lvm::SegmentKind::Other(t) => t.clone(),
                    })
                    .collect(),
                pvs,
                mappable: reason.is_none(),
                reason,
            });
        }
    }
    out
}

/// The LVs for people: one line each.
pub fn table(volumes: &[Volume]) -> String {
    if volumes.is_empty() {
        return String::new();
    }
    let mut out = format!("{} LVM logical volumes\n", volumes.len());
    out.push_str(&format!(
        "{:<24}  {:>10}  {:>4}  {:<10}  {}\n",
        "lv (--partition lv=)", "size", "segs", "filesystem", "note"
    ));
    for v in volumes {
        out.push_str(&format!(
            "{:<24}  {:>10}  {:>4}  {:<10}  {}\n",
            format!("{}/{}", v.vg, v.lv),
            indicatif::HumanBytes(v.size).to_string(),
            v.segments,
            v.fstype.as_deref().unwrap_or("-"),
            v.reason.as_deref().unwrap_or("")
        ));
    }
    out
}
