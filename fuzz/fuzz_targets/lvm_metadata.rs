//! LVM2 from untrusted bytes: the input scanned as a device holding a
//! physical volume (label, metadata area, text) or, when it holds no
//! label, parsed as volume group text metadata; then every logical volume
//! planned.
//!
//! Invariants: no panic; refusals are at the probe step (parsing) or the
//! map step (planning) and name the image; an accepted VG has segments
//! contiguous from extent 0; a plan's pieces cover the LV exactly, in
//! order, each inside its PV's extents, with one device-mapper line each;
//! a scanned PV is listed by its own VG.
#![no_main]

use diskmount::Step;
use diskmount::volume::lvm::{Plan, VolumeGroup, dm_table, scan};
use diskmount_fuzz::{Image, check_error, path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let img = Image::new(data);
    // A device image (sparse, or with a label) has its text parsed by the
    // scan; anything else is parsed as text.
    let mut text = matches!(img, Image::Plain(_));
    match scan(&img, path(), img.len()) {
        Ok(Some(pv)) => {
            text = false;
            assert!(pv.label.sector < 4);
            assert!(pv.label.metadata_areas.len() <= 2);
            if let Some(vg) = &pv.vg {
                let me = pv.in_vg().expect("a PV its VG does not list");
                let end = u128::from(me.pe_start) * 512
                    + u128::from(me.pe_count) * u128::from(vg.extent_bytes());
                assert!(end <= u128::from(img.len()), "extents beyond the device");
                check_vg(vg);
            }
        }
        Ok(None) => {}
        Err(e) => {
            text = false;
            check_error(&e, Step::Probe);
        }
    }
    if text {
        match VolumeGroup::parse(data, path()) {
            Ok(vg) => check_vg(&vg),
            Err(e) => check_error(&e, Step::Probe),
        }
    }
});

fn check_vg(vg: &VolumeGroup) {
    assert!(vg.extent_size > 0);
    for lv in &vg.lvs {
        let mut next = 0;
        for s in &lv.segments {
            assert_eq!(s.start_extent, next, "{lv:?}");
            assert!(s.extent_count > 0);
            next += s.extent_count;
        }
        let plan = match vg.plan(&lv.name, path(), |_| true) {
            Ok(p) => p,
            Err(e) => {
                check_error(&e, Step::Map);
                continue;
            }
        };
        assert_eq!(plan.size(), lv.extent_count() * vg.extent_bytes());
        let mut at = 0;
        for p in plan.pieces() {
            assert_eq!(p.lv_offset, at);
            assert!(p.len > 0);
            at += p.len;
            let pv = vg.pv(&p.pv).expect("a piece on an unlisted PV");
            assert!(p.pv_offset >= pv.pe_start * 512);
            let pv_end = u128::from(pv.pe_start) * 512
                + u128::from(pv.pe_count) * u128::from(vg.extent_bytes());
            assert!(u128::from(p.pv_offset) + u128::from(p.len) <= pv_end);
        }
        if let Plan::DeviceMapper(pieces) = &plan {
            assert!(pieces.len() > 1);
            let table = dm_table(pieces, path(), |_| Some((253, 0))).unwrap();
            assert_eq!(table.len(), pieces.len());
        }
    }
}
