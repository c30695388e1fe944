"""Consent-aware source filtering (robots.txt, TDMRep, content signals) with an audit trail."""
