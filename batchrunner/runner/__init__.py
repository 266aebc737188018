"""The runners: they join the ledger and a provider's backend. Concurrent mode (concurrent.py)
sends items one request each; batch mode (batch.py) packs them into Batch API files."""
