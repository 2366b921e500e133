"""picluster's policy pack: `pulumi preview --policy-pack policy` runs it next to the program."""

from picluster_policies import keep_secret_markers, policies
from pulumi_policy import EnforcementLevel, PolicyPack

# Before the pack starts serving: secrets must reach the policies still marked as secrets.
keep_secret_markers()

PolicyPack(
    name="picluster",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=policies(),
)
