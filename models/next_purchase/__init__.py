"""The next-purchase model: file loading and encoding, the LSTM, training, evaluation, serving."""
