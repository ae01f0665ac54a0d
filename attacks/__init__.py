"""harmlens.attacks: role-modality perturbations, text jailbreaks, GCG, judges, ASR evaluation and refusal projections."""

from harmlens.attacks.evaluate import evaluate_asr, rejudge
from harmlens.attacks.gcg import GCGConfig, GCGResult, gcg_attack, gcg_jailbreak, gcg_many
from harmlens.attacks.guard_attack import GuardAttackConfig, GuardAttackResult, guard_attack, guard_attack_many
from harmlens.attacks.guard_search import SearchConfig, SearchResult, guard_search, unguarded_search
from harmlens.attacks.jailbreaks import NAMED as JAILBREAKS
from harmlens.attacks.jailbreaks import Jailbreak, get_jailbreak, gptfuzzer, gptfuzzer_templates
from harmlens.attacks.judges import Judge, JudgeItem, RefusalScoreJudge, SubstringJudge, coherent, get_judge
from harmlens.attacks.model_judge import ModelJudge
from harmlens.attacks.persuasion import TECHNIQUES as PERSUASION_TECHNIQUES
from harmlens.attacks.persuasion import persuade, persuasion_wrap
from harmlens.attacks.projection import ProjectionResult, default_band, projection_analysis
from harmlens.attacks.quality import is_answer
from harmlens.attacks.report import AttackReport, Rate, wilson_interval
from harmlens.attacks.settings import SETTINGS, TEXT_SETTINGS, Setting, get_setting, perturb, perturb_many, perturb_text
from harmlens.runtime import RoleTemplate, role_template

__all__ = [
    "AttackReport",
    "GCGConfig",
    "GCGResult",
    "GuardAttackConfig",
    "GuardAttackResult",
    "JAILBREAKS",
    "Jailbreak",
    "Judge",
    "JudgeItem",
    "ModelJudge",
    "PERSUASION_TECHNIQUES",
    "ProjectionResult",
    "Rate",
    "RefusalScoreJudge",
    "RoleTemplate",
    "SETTINGS",
    "SearchConfig",
    "SearchResult",
    "Setting",
    "SubstringJudge",
    "TEXT_SETTINGS",
    "coherent",
    "default_band",
    "is_answer",
    "evaluate_asr",
    "rejudge",
    "gcg_attack",
    "gcg_jailbreak",
    "gcg_many",
    "guard_attack",
    "guard_attack_many",
    "guard_search",
    "unguarded_search",
    "get_jailbreak",
    "get_judge",
    "get_setting",
    "gptfuzzer",
    "gptfuzzer_templates",
    "persuade",
    "persuasion_wrap",
    "perturb",
    "perturb_many",
    "perturb_text",
    "projection_analysis",
    "role_template",
    "wilson_interval",
]
