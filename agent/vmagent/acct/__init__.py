"""Process accounting (acct(5)): the records the kernel writes when a
process exits -- the authoritative close-out of a VM's CPU and lifetime."""
