"""Resuming `nas run`: the settings as manifest.json records them, and which of them a resumed run may change
(by each setting's resume rule, nas.settings)."""

from __future__ import annotations

from nas import config as config_tree
from nas.config import RunConfig
from nas.errors import NasError
from nas.settings import BUDGET, GROWS, RESULT, SILENT, UNTIL_TRAINED, flag_of, flatten, resume_rules, to_dict


def resume_changes(previous: dict, settings: dict, trained: bool, searched: bool = True) -> dict:
    """The settings of a resumed run that differ from the run's manifest: {dotted name: (before, now)}.
    A NasError lists those that would change its results, by each setting's resume rule (nas.config):
    the budget only once the search has begun, the workers only until the supernet is trained."""
    previous, settings = flatten(previous), flatten(settings)
    rules = resume_rules(config_tree.RunConfig)  # looked up now: the tree is the one place settings are declared

    def rule(name: str) -> str:
        return rules.get(name, RESULT)

    def flag(name: str) -> str:
        return flag_of(config_tree.RunConfig, name)

    for name in (k for k in settings if rule(k) == GROWS and isinstance(previous.get(k), int)):
        if settings[name] < previous[name]:
            raise NasError(
                f"--resume {flag(name)} {settings[name]}: this run was started for {previous[name]} {name} and a "
                f"study does not shrink; resume with {flag(name)} {previous[name]} (or more, to extend it)"
            )
    fixed = {RESULT} | ({BUDGET} if searched else set()) | (set() if trained else {UNTIL_TRAINED})
    refused = {
        k: (previous[k], settings.get(k))
        for k in settings
        if rule(k) in fixed and k in previous and previous[k] != settings.get(k)
    }
    if refused:
        listed = "; ".join(f"{flag(k)} was {before!r}, now {now!r}" for k, (before, now) in refused.items())
        raise NasError(
            f"--resume with other settings would mix results: {listed}. Resume with the run's settings, or start "
            "a new run with another --out"
        )
    return {
        k: (previous[k], settings.get(k))
        for k in settings
        if k in previous and previous[k] != settings.get(k) and rule(k) != SILENT
    }


def settings_record(config: RunConfig) -> dict:
    """The settings as manifest.json records them: the storage URL without its password."""
    from nas.storage import redact

    return {**to_dict(config), "storage": redact(config.storage) if config.storage else None}
