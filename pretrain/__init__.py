"""Context-encoder pretraining: AlexNet encoder, channel-wise FC, decoder, masks, loss, loop and ce.pt I/O."""
