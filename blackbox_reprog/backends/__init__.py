"""Backends: the contract every model backend fulfils, the plugin registry, answer
degradation, the ledger every query passes, and the conformance kit."""
