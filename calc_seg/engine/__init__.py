from calc_seg.engine.trainer import CalcSegTrainer, evaluate_studies

__all__ = ["CalcSegTrainer", "evaluate_studies"]
