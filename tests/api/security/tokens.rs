//! Forged, confused and malformed tokens (RFC 8725, ASVS 9.1-9.2).
