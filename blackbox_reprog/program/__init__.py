"""Programs: input transforms, label maps, losses, and applying a program through the ledger."""
