from widthlab.data.datamodule import TokenDataModule

__all__ = ["TokenDataModule"]
