from .reference import check_scan_inputs, selective_scan_bidir_ref, selective_scan_ref

__all__ = ["check_scan_inputs", "selective_scan_bidir_ref", "selective_scan_ref"]
