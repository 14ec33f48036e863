"""HTTP plumbing shared by the mailbox and rendezvous APIs."""
